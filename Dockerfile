# railgate gateway image. Multi-stage: build the model repository with the dev tools, build a wheel of
# the product alone (gateway, edge, railcore), ship a slim runtime without any dev tooling.
# Hubs in production run the official Triton container over the same models/repository.
FROM python:3.11-slim AS models
WORKDIR /src
COPY . .
RUN pip install --no-cache-dir -e ".[dev]" \
 && railgate models build --repository /models

FROM python:3.11-slim AS wheel
WORKDIR /src
# Only the product packages: hub/, models/ and devtools/ are not in the build context of the wheel.
COPY pyproject.toml README.md ./
COPY gateway gateway
COPY edge edge
COPY railcore railcore
RUN pip install --no-cache-dir build && python -m build --wheel --outdir /wheels

FROM python:3.11-slim
RUN useradd --create-home --uid 10001 railgate
COPY --from=wheel /wheels /wheels
RUN pip install --no-cache-dir /wheels/*.whl && rm -rf /wheels
COPY --from=models --chown=railgate /models /srv/models
USER railgate
WORKDIR /srv
EXPOSE 8080
HEALTHCHECK --interval=10s --timeout=2s --start-period=20s --retries=3 \
  CMD python -c "import urllib.request,sys; sys.exit(urllib.request.urlopen('http://127.0.0.1:8080/v2/health/ready', timeout=2).status != 200)"
ENTRYPOINT ["railgate"]
CMD ["serve", "--host", "0.0.0.0", "--port", "8080", "--repository", "/srv/models"]
