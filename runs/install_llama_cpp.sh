#!/usr/bin/env bash
# Install llama.cpp's Python binding into the active environment if it is missing. pip builds it from source
# (about 5-15 minutes on 2 cores the first time, then pip's cache has the wheel); GGML_NATIVE=OFF makes a portable build.
python -c "import llama_cpp" 2>/dev/null || CMAKE_ARGS="-DGGML_NATIVE=OFF" python -m pip install -q llama-cpp-python==0.3.36
