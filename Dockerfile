# One image for every role; the command picks it: twotier api | worker | beat | migrate.
FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1 PIP_NO_CACHE_DIR=1
WORKDIR /app
COPY pyproject.toml README.md alembic.ini ./
COPY services ./services
COPY workers ./workers
COPY migrations ./migrations
RUN pip install . && useradd --system --uid 10001 twotier
USER twotier
EXPOSE 8000
CMD ["twotier", "api", "--host", "0.0.0.0", "--port", "8000"]
