FROM python:3.11-slim
WORKDIR /app
COPY pyproject.toml README.md ./
COPY proxy proxy
COPY providers providers
RUN pip install --no-cache-dir ".[local]"
COPY config config
EXPOSE 8080
CMD ["embedgate", "serve", "--host", "0.0.0.0", "--port", "8080"]
