"""Tandem methods under load: one deployment per method, driven level by level by a closed loop of
`AsyncClient.stream` requests (c in flight; when one finishes the next starts), timing every chunk."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from runtime.bench.load_records import LevelRun, LoadRecord, LoadSettings
from runtime.bench.sampler import ProcessSampler
from runtime.bench.tandem import CLIENT_TIMEOUT_S, placement_of
from runtime.client import AsyncClient
from runtime.launch import Deployment
from runtime.results import GenerationParams


def run_tandem_load(name: str, config_path: Path, settings: LoadSettings,
                    on_request: Callable[[], None]) -> list[LevelRun]:
    """Start the deployment, warm it up, then serve every level in turn; one `LevelRun` per level."""
    with Deployment(str(config_path)) as deployment:
        deployment.start()
        pids = {role: process.pid for role, process in deployment.processes.items()}
        template = LevelRun(name, "tandem", 0, placement_of(deployment.config))
        address = deployment.config.coordinator.client_address
        return asyncio.run(_levels(address, pids, template, settings, on_request))


def params_of(settings: LoadSettings, max_new_tokens: int) -> GenerationParams:
    """Exactly `max_new_tokens` per request (EOS ignored), greedy unless a temperature was given."""
    return GenerationParams(max_new_tokens=max_new_tokens, temperature=settings.temperature, seed=settings.seed,
                            ignore_eos=True)


async def _levels(address: str, pids: dict[str, int], template: LevelRun, settings: LoadSettings,
                  on_request: Callable[[], None]) -> list[LevelRun]:
    runs = []
    async with AsyncClient(address, timeout_s=CLIENT_TIMEOUT_S) as client:
        await one_request(client, 0, settings.prompts[0], params_of(settings, settings.warmup_tokens))
        on_request()
        params = params_of(settings, settings.max_new_tokens)
        for concurrency in settings.levels:
            indices = settings.requests_at(concurrency)
            with ProcessSampler(pids) as sampler:
                busy_before = await _verifier_busy_s(client)
                start = time.perf_counter()
                records = await closed_loop(client, settings.prompts, indices, concurrency, params, on_request)
                wall_s = time.perf_counter() - start
                busy_after = await _verifier_busy_s(client)
            busy = None if busy_before is None or busy_after is None else busy_after - busy_before
            runs.append(LevelRun(template.method, template.kind, concurrency, template.placement, records, wall_s,
                                 busy, sampler.peak_rss_mb))
    return runs


async def _verifier_busy_s(client: AsyncClient) -> float | None:
    """The deployment's cumulative verifier compute seconds (its metrics' `verifier_busy_s`)."""
    value: Any = (await client.metrics()).get("verifier_busy_s")
    return float(value) if value is not None else None


async def closed_loop(client: AsyncClient, prompts: list[list[int]], indices: list[int], concurrency: int,
                      params: GenerationParams, on_request: Callable[[], None]) -> list[LoadRecord]:
    """Serve request i (prompt `indices[i]`) for every i, keeping `concurrency` requests in flight."""
    records: list[LoadRecord | None] = [None] * len(indices)
    pending = iter(range(len(indices)))  # shared by the slots: each takes the next request when it is free

    async def slot() -> None:
        for i in pending:
            records[i] = await one_request(client, indices[i], prompts[indices[i]], params)
            on_request()

    await asyncio.gather(*(slot() for _ in range(min(concurrency, len(indices)))))
    return [record for record in records if record is not None]


async def one_request(client: AsyncClient, prompt_index: int, prompt: list[int],
                      params: GenerationParams) -> LoadRecord:
    """One streamed request, with the arrival time of each chunk since it was sent."""
    record = LoadRecord(prompt_index)
    start = time.perf_counter()
    async for chunk in client.stream(prompt, params):
        if chunk.token_ids:
            record.chunk_s.append(time.perf_counter() - start)
            record.chunk_tokens.append(len(chunk.token_ids))
            record.token_ids += chunk.token_ids
        if chunk.finish_reason is not None:
            record.stats = dict(chunk.stats or {})
    return record
