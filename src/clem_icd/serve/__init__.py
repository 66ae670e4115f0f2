"""The HTTP service and the coder's review page (`clem-icd serve`; extra `serve`).

- `app`: the FastAPI application (routes, limits, auth, health, metrics).
- `batcher`: cross-request micro-batching in one inference worker.
- `engine`: the loaded model behind it; `code_search`: `GET /v1/codes`.
- `server`: running it under uvicorn, with draining on SIGTERM and logs without note text.
- `static/`: the review page (no asset from elsewhere).
"""
