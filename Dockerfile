# GPU image of mt-serve: the official Ray image of our Ray version, the CUDA build of torch, our
# code and the embedded model. The Ray version here, in pyproject.toml (ray[serve]==...) and in
# helm/values.yaml (rayVersion) is one value (tests/deploy/test_versions.py).
#   docker build -t mt-serve:0.1.0 .
#   docker run --gpus all -p 8000:8000 -p 8080:8080 mt-serve:0.1.0
# On Kubernetes, KubeRay starts Ray in this image itself (helm/); CMD is for plain docker.
FROM rayproject/ray:2.60.0-py311-gpu

# The CUDA build of the torch that pyproject.toml pins (there, the CPU wheel of the build machines).
ARG TORCH_VERSION=2.13.0
ARG TORCH_INDEX_URL=https://download.pytorch.org/whl/cu128

ENV PYTHONPATH=/app \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1

WORKDIR /app

# Dependencies first, so that this layer is rebuilt only when pyproject.toml changes. torch comes
# first from the CUDA index, so the pin is already satisfied when the other dependencies install.
COPY --chown=1000:100 pyproject.toml ./
RUN pip install --no-cache-dir "torch==${TORCH_VERSION}" --index-url "${TORCH_INDEX_URL}" \
    && python -c "import tomllib; deps = tomllib.load(open('pyproject.toml', 'rb'))['project']['dependencies']; open('/tmp/requirements.txt', 'w').write(chr(10).join(deps))" \
    && pip install --no-cache-dir -r /tmp/requirements.txt \
    && rm /tmp/requirements.txt \
    && python -c "import torch; assert torch.version.cuda, 'torch is a CPU build: ' + torch.__version__"

# The code, the Serve configs and the embedded model (deploy/serve_config.yaml reads it from
# /app/models/embedded-en-de).
COPY --chown=1000:100 model/ model/
COPY --chown=1000:100 service/ service/
COPY --chown=1000:100 deploy/ deploy/
COPY --chown=1000:100 models/embedded-en-de/ models/embedded-en-de/

# The Ray image's user: ray, uid 1000, group users (100).
USER 1000:100

# 8000 HTTP API (Serve proxy), 8080 Prometheus metrics, 8265 Ray dashboard.
EXPOSE 8000 8080 8265

HEALTHCHECK --interval=30s --timeout=5s --start-period=300s --retries=3 \
    CMD ["python", "-c", "import urllib.request; urllib.request.urlopen('http://127.0.0.1:8000/-/healthz', timeout=4)"]

# A local Ray node with its metrics on 8080, then the production Serve config on it.
CMD ["bash", "-c", "ray start --head --metrics-export-port=8080 --dashboard-host=0.0.0.0 --disable-usage-stats && exec serve run --address=auto deploy/serve_config.yaml"]
