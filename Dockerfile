# Responses WebSocket gateway: slim, non-root, uvloop. Config mounted at /etc/gateway.
FROM python:3.11-slim
ENV PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1 PIP_NO_CACHE_DIR=1
WORKDIR /app
COPY pyproject.toml README.md ./
COPY gateway ./gateway
COPY normalizer ./normalizer
COPY pool ./pool
COPY statestore ./statestore
COPY sim ./sim
RUN pip install . && useradd --system --uid 10001 --no-create-home gateway
COPY gateway/example.toml /etc/gateway/gateway.toml
USER 10001
EXPOSE 8080
STOPSIGNAL SIGTERM
HEALTHCHECK --interval=10s --timeout=2s --retries=3 \
  CMD python -c "import urllib.request,sys; sys.exit(0 if urllib.request.urlopen('http://127.0.0.1:8080/healthz', timeout=2).status == 200 else 1)"
CMD ["python", "-m", "gateway", "--config", "/etc/gateway/gateway.toml", "--host", "0.0.0.0", "--port", "8080"]
