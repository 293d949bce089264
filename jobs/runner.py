"""The Ray runtime every job shares: batches cut on the driver, mapped through actors on Ray
Data (or in this process), under OUT's run lease, with the fault rules of docs/faults.md.

    outcome = drive(cut_batches(todo, size), len(todo), ActorClass, kwargs, runtime, local, name,
                    run_id, decode=decode_stage(...))

A batch is {"image_id": [...], "uri": [...], ...}: one Ray row, fixed by the driver, so a retried
batch holds the same images and overwrites the same shards. With `decode`, a CPU stage of
`DecodeActor`s reads, hashes, decodes and resizes each batch's images first
(pipeline.batch.decoder) and the compute actors (on GPUs when there are any) only compute:
they find the result in the batch's "decoded" column (`decoded_items`). Both stages follow the
same poison-batch rule (`guarded_process`), each under its own attempt keys. On Ray a writer
stage of `CommitActor`s commits each batch's shards under the run lease, so the compute actors
never wait on the object store; in this process the actor commits itself.
"""
from __future__ import annotations

import dataclasses
import os
import pickle
import sys
import time
from datetime import datetime
from typing import Iterator

from pipeline.config import RuntimeConfig, allowed_failures
from pipeline.io.attempts import Attempts, unit_key
from pipeline.io.lease import RunLease, lease_owner
from pipeline.io.progress import Progress
from pipeline.io.runlog import write_run_summary
from pipeline.io.shards import ERROR_DIR, commit_tables, finished_ids
from pipeline.io.sources import ImageRef
from pipeline.io.storage import with_retries

PROGRESS_EVERY_S = 10.0  # a progress line in the job log at most this often
# Ray Data blocks: one driver-made batch per block up to this many, beyond which consecutive
# batches share a block. Each block is a driver-side object and one actor task: 15,000 blocks
# (COCO train at batch 8) took 36 s in from_items alone on this machine; 1,000 still give
# every actor many tasks.
MAX_BLOCKS = 1000
# Attempt keys of the decode stage are its job digest with this suffix: a batch that killed
# its decoder is told apart from one that killed its compute actor.
DECODE_UNIT = ":decode"
# The batch key that tells a compute actor to leave its commit to the writer stage.
DEFER_COMMIT = "defer_commit"


def set_threads(threads: int, torch_threads: bool = True) -> None:
    """Ray pins OMP_NUM_THREADS=1 in workers; give each actor its share of the cores instead
    (torch's too, unless the actor never loads torch)."""
    import threadpoolctl

    if torch_threads:
        import torch

        torch.set_num_threads(threads)
    threadpoolctl.threadpool_limits(threads)


def guarded_batch(actor, digest: str, items: list, process, shards, deferred: bool = False) -> dict:
    """One batch of an actor (with .out, .attempts, .max_deaths, .run_id): process it, commit it,
    and report {"image_id", "ok", "reason"} lists for the driver.

    `items` have `.image_id` and `.uri` (ImageRef) or `.ref` (a ref wrapper); `process(items)`
    returns a dict of lists, "errors" among them; `shards(result)` -> (shard name, {kind:
    (table or None, config JSON)}), what pipeline.io.shards.commit_tables writes. `deferred`
    (the batch went through `drive` on Ray, whose writer stage commits): the report carries the
    shards as a "commit" column instead, and the actor goes on with its next batch.

    Poison batches: a batch that has lost `max_deaths` worker processes (markers in OUT,
    pipeline.io.attempts) is run one item at a time, and an item that loses as many alone
    becomes an error row (stage "worker") so the rest of the batch is written and the job
    finishes. Resubmits: a batch is committed only while `run_id` holds OUT's run lease
    (pipeline.io.lease), so a dead driver's actors stop writing once a new driver took over.
    Every store access waits out an outage (with_retries) instead of failing the batch, which
    Ray Data would not retry: the job stalls during an outage, then goes on."""
    refs = [getattr(item, "ref", item) for item in items]
    ids = [r.image_id for r in refs]
    result, lost = guarded_process(actor, digest, items, process)
    name, tables = shards(result)
    failed = {e["image_id"]: f"{e['stage']}: {e['reason']}" for e in result["errors"]}
    report = {"image_id": ids, "ok": [i not in failed for i in ids], "reason": [failed.get(i, "") for i in ids]}
    if deferred:  # the result is safe in Ray's object store: a writer failure reruns the write alone
        if lost:
            clear_deaths(actor, digest, ids)
        return {**report, "commit": pickle.dumps((name, tables), protocol=5)}
    report = commit_leased(actor.out, actor.run_id, name, tables, report)
    if lost:
        clear_deaths(actor, digest, ids)
    return report


def commit_leased(out: str, run_id: str | None, name: str, tables: dict, report: dict) -> dict:
    """Commit a batch's shards while `run_id` holds OUT's run lease -> the batch's report, or
    every image "superseded" when a newer driver owns OUT (it lists and does them itself)."""
    if run_id is not None and with_retries(lease_owner, out) != run_id:
        ids = report["image_id"]
        return {"image_id": ids, "ok": [False] * len(ids),
                "reason": ["superseded: another driver took over the run lease"] * len(ids)}
    with_retries(commit_tables, out, name, tables)
    return report


class CommitActor:
    """Ray Data callable of the writer stage: commits each batch's shards (the "commit" column
    guarded_batch left) under the run lease, so the compute actors never wait on the object
    store; passes the batch's report on."""

    def __init__(self, out: str, run_id: str | None = None):
        set_threads(1, torch_threads=False)
        self.out, self.run_id = out, run_id

    def __call__(self, batch: dict) -> dict:
        report = {key: list(batch[key]) for key in ("image_id", "ok", "reason")}
        name, tables = pickle.loads(batch["commit"])
        return commit_leased(self.out, self.run_id, name, tables, report)


def guarded_process(actor, digest: str, items: list, process, unit: str | None = None) -> tuple[dict, int]:
    """`process(items)` under the poison-batch rule of guarded_batch -> (its result, with a
    "worker" error row (of config `digest`) for each image that lost its worker alone; worker
    processes the whole batch had lost before). `unit`: the attempt keys' prefix, when a stage
    other than the one that writes `digest` counts its own deaths (default `digest`)."""
    unit = unit or digest
    refs = [getattr(item, "ref", item) for item in items]
    key = unit_key(unit, [r.image_id for r in refs])
    lost = len(with_retries(actor.attempts.deaths, key))
    if lost < actor.max_deaths:
        with actor.attempts.attempt(key):
            result = process(items)
    else:
        result = {}
        for item, ref in zip(items, refs):
            one = unit_key(unit, [ref.image_id])
            dead = actor.attempts.deaths(one)
            if len(dead) >= actor.max_deaths:
                part = {"errors": [worker_error(ref, digest, dead, lost)]}
            else:
                with actor.attempts.attempt(one):
                    part = process([item])
            for name, values in part.items():
                result.setdefault(name, []).extend(values)
    result.setdefault("errors", [])
    return result, lost


def clear_deaths(actor, digest: str, ids: list[str]) -> None:
    """Forget the worker deaths of a batch and of its images alone, once its result is safe."""
    with_retries(actor.attempts.clear, [unit_key(digest, ids)] + [unit_key(digest, [i]) for i in ids])


def worker_error(ref: ImageRef, config_digest: str, dead: list[dict], batch_deaths: int) -> dict:
    """The error row of an image whose worker process died every time it ran alone."""
    where = ", ".join(f"pid {d['pid']} on {d['host']}" for d in dead)
    return {"image_id": ref.image_id, "source_uri": ref.uri, "config_digest": config_digest,
            "stage": "worker", "error_type": "WorkerDied",
            "reason": (f"worker process exited while processing this image alone, {len(dead)} times "
                       f"({where}), after its batch lost {batch_deaths}: killed by a signal or the "
                       f"OOM killer, a crash or exit in native code, or its node lost; the exit "
                       f"status is in the Ray logs of those processes")[:2000]}


class DecodeActor:
    """Ray Data callable of the decode stage: each batch's images read, hashed, decoded and
    resized on a CPU (pipeline.batch.decoder.ImageDecoder), passed on as the batch with a
    "decoded" column (the pickled list: one DecodedImage or error row per image, in order).
    An image whose decoder kills its process becomes a "worker" error row here, as in
    guarded_batch, so the compute stage writes it and the rest of its batch."""

    def __init__(self, digest: str, out: str, patch_size: int, long_side: int | None, max_pixels: int,
                 run_id: str | None = None, max_worker_deaths: int = 2):
        from pipeline.batch.decoder import ImageDecoder

        set_threads(1, torch_threads=False)
        self.decoder = ImageDecoder(digest, patch_size, long_side, max_pixels)
        self.digest, self.out, self.run_id, self.max_deaths = digest, out, run_id, max_worker_deaths
        self.attempts = Attempts(out)

    def __call__(self, batch: dict) -> dict:
        refs = [ImageRef(str(i), str(u)) for i, u in zip(batch["image_id"], batch["uri"])]
        unit = self.digest + DECODE_UNIT
        result, lost = guarded_process(self, self.digest, refs, lambda part: {"decoded": self.decoder(part)},
                                       unit=unit)
        found = {_image_id(item): item for item in result.get("decoded", []) + result["errors"]}
        if lost:
            clear_deaths(self, unit, [r.image_id for r in refs])
        return {**batch, "decoded": pickle.dumps([found[r.image_id] for r in refs], protocol=5)}


def _image_id(item) -> str:
    """The image of a decode stage's item: a DecodedImage or an error row."""
    return item["image_id"] if isinstance(item, dict) else item.ref.image_id


def decoded_items(batch: dict) -> dict | None:
    """{image_id: DecodedImage or error row} from a batch that went through the decode stage,
    else None (the compute actor decodes itself: in-process runs)."""
    if "decoded" not in batch or batch["decoded"] is None:
        return None
    return {_image_id(item): item for item in pickle.loads(batch["decoded"])}


def decode_stage(digest: str, out: str, backbone: str, long_side: int | None, max_pixels: int) -> dict:
    """DecodeActor's constructor arguments for a job whose network is registry entry `backbone`
    (its patch size, from the torch-free registry: the driver never loads torch)."""
    from pipeline.features.registry import get_spec

    return {"digest": digest, "out": out, "patch_size": get_spec(backbone).patch_size,
            "long_side": long_side, "max_pixels": max_pixels}


def not_done(refs: list[ImageRef], out: str, digest: str, kind: str, retry_errors: bool,
             error_kind: str = ERROR_DIR) -> tuple[list[ImageRef], int]:
    """(refs with no row under OUT/kind, nor unless retry_errors an error row under
    OUT/error_kind, for `digest`; how many were skipped). Says how many of the skipped had
    failed, and how to run them again."""
    done = finished_ids(out, digest, kind)
    if not retry_errors:
        failed = finished_ids(out, digest, error_kind) - done
        n_failed = sum(r.image_id in failed for r in refs)
        if n_failed:
            print(f"{n_failed} of these images failed in an earlier run (error rows in {out}/{error_kind}) "
                  f"and are skipped; --retry-errors runs them again")
        done |= failed
    todo = [r for r in refs if r.image_id not in done]
    return todo, len(refs) - len(todo)


def _placement(runtime: RuntimeConfig, resources: dict) -> tuple[str, int, dict, int]:
    """(device, number of actors, Ray resources per actor, threads per actor)."""
    gpus = int(resources.get("GPU", 0))
    cpus = max(1, int(resources.get("CPU", 1)))
    device = runtime.device if runtime.device != "auto" else ("cuda" if gpus else "cpu")
    if device == "cuda":
        n = runtime.num_actors or gpus
        return device, n, {"num_gpus": 1, "num_cpus": 1}, max(1, cpus // max(n, 1))
    # Leave a core for Ray Data's own tasks: all cores held by actors deadlocks on 2 cores.
    n = runtime.num_actors or max(1, cpus - 1)
    share = max(1, cpus // n)
    return device, n, {"num_cpus": min(1.0, (cpus - 0.5) / n)}, share


def _decode_placement(device: str, n_actors: int, resources: dict, cluster: dict) -> tuple[int, float]:
    """(most decode actors, CPUs each): the CPUs the compute actors leave, less half a core
    for Ray Data's own work. A GPU actor waits on decoding (~4 ms an image on one core against
    ~1 ms of GPU work), so GPU nodes get a whole core per decoder; on CPU-only machines the
    compute actors are the bound and one small decoder keeps them fed."""
    spare = float(cluster.get("CPU", 1)) - n_actors * float(resources.get("num_cpus", 1)) - 0.5
    cpus = 1.0 if device == "cuda" else 0.25
    return max(1, int(spare // cpus)), cpus


def cut_batches(todo: list[ImageRef], size: int) -> list[dict]:
    """The work, cut into batches on the driver: {"image_id": [...], "uri": [...]} each.

    Batches are fixed here, not by Ray Data, so a batch retried after a worker death holds
    the same images as the first attempt and overwrites the same shards (commit_tables)."""
    return [{"image_id": [r.image_id for r in todo[s:s + size]], "uri": [r.uri for r in todo[s:s + size]]}
            for s in range(0, len(todo), size)]


def _run_in_process(batches: list[dict], actor_cls, actor_kwargs: dict, runtime: RuntimeConfig,
                    ran: dict) -> Iterator[dict]:
    """The actors' work without Ray: one actor in this process, yielding each batch's
    {"image_id", "ok", "reason"} lists as it finishes.

    One core is left free, as on Ray: OpenBLAS threads spin-wait, and on a busy 2-core
    machine two of them made the graph and eigensolve ~9x slower than one (1.38 vs 0.15 s per
    ECSSD image at 448 px)."""
    device = runtime.device if runtime.device != "auto" else "cpu"
    threads = max(1, (os.cpu_count() or 1) - 1)
    print("running in this process (no Ray)")
    ran.update(device=device, actors=1, threads=threads, decoders=0, writers=0)
    actor = actor_cls(**actor_kwargs, device=device, batch_size=runtime.batch_size, threads=threads)
    for batch in batches:
        yield actor(batch)


def run_leased(out: str, runtime: RuntimeConfig, run):
    """`run(lease)` under OUT's run lease: a driver resubmitted while this one (or its actors)
    still runs waits, or takes over once this one's heartbeat is stale."""
    lease = RunLease(out, runtime.lease_heartbeat_s, runtime.lease_stale_s).acquire()
    try:
        return run(lease)
    finally:
        lease.release()


def drive(batches: list[dict], n_images: int, actor_cls, actor_kwargs: dict, runtime: RuntimeConfig,
          local: bool, name: str, run_id: str, decode: dict | None = None,
          ran: dict | None = None) -> dict[str, str | None]:
    """Map `batches` through `actor_cls` (on Ray, or in this process) printing progress ->
    {image_id: None when written, else why it failed} (counts are of distinct ids).

    decode: DecodeActor's arguments (decode_stage) to run a CPU decode stage before the
    actors on Ray; in this process the actor decodes itself. ran: filled with what actually
    ran (device, actors, decoders) for the run summary."""
    ran = {} if ran is None else ran
    extra = {"run_id": run_id, "max_worker_deaths": runtime.max_worker_deaths}
    progress = Progress(n_images, every=PROGRESS_EVERY_S)
    results = (_run_in_process(batches, actor_cls, {**actor_kwargs, **extra}, runtime, ran) if local
               else _run_on_ray(batches, actor_cls, {**actor_kwargs, **extra}, runtime, name,
                                None if decode is None else {**decode, **extra}, ran))
    outcome: dict[str, str | None] = {}
    for batch in results:
        new = {i: None if ok else reason for i, ok, reason in zip(batch["image_id"], batch["ok"], batch["reason"])
               if i not in outcome}
        outcome.update(new)
        n_failed = sum(reason is not None for reason in new.values())
        line = progress.update(len(new) - n_failed, n_failed)
        if line:
            print(line, flush=True)
    return outcome


def finish_summary(summary: dict, outcome: dict[str, str | None], started: datetime, clock: float,
                   local: bool, runtime: RuntimeConfig, out: str, lease: RunLease, ran: dict | None = None) -> dict:
    """Fill a run summary from the outcome and write it to OUT/runs/ (pipeline.io.runlog):
    counts, status (max_failures), what was asked (runtime) and what ran (`ran`: device and
    actors, drive's record), and the software (software_versions)."""
    seconds = time.monotonic() - clock
    errors = [{"image_id": i, "reason": r} for i, r in outcome.items() if r is not None]
    allowed = allowed_failures(runtime.max_failures, len(outcome))
    if errors and len(errors) == len(outcome):
        summary.update(status="failed", why=f"every image failed ({len(errors)})")
    elif len(errors) > allowed:
        summary.update(status="failed", why=f"{len(errors)} of {len(outcome)} images failed, more than "
                                            f"--max-failures {runtime.max_failures} allows ({allowed})")
    else:
        summary.update(status="ok")
    summary.update(processed=len(outcome) - len(errors), failed=len(errors), errors=errors,
                   seconds=round(seconds, 2), images_per_second=round(len(outcome) / seconds, 3),
                   started=started.isoformat(timespec="seconds"), mode="in-process" if local else "ray",
                   runtime=dataclasses.asdict(runtime), ran=ran or {}, software=software_versions(),
                   lease={"owner": lease.owner, "waited_s": round(lease.waited_s, 1), "took_over": lease.took_over})
    summary["run_file"] = write_run_summary(out, summary, started)
    return summary


def _run_on_ray(batches: list[dict], actor_cls, actor_kwargs: dict, runtime: RuntimeConfig,
                name: str, decode: dict | None, ran: dict) -> Iterator[dict]:
    """Actors of `actor_cls` on Ray Data, one driver-made batch per row; yields each batch's
    {"image_id", "ok", "reason"} lists as it finishes (streaming, in completion order).

    Fault tolerance is Ray Data's default for actor pools (Ray 2.60, actor_pool_map_operator
    `_apply_default_remote_args`): max_restarts=-1 and max_task_retries=-1, so a killed actor
    is restarted (on another node if its node is gone) and its batch re-run. They are not
    passed here because passing remote args to `map` is deprecated in 2.60 (removed in 2.64);
    tests/test_faults.py proves the behaviour on a multi-node cluster."""
    import ray

    if not ray.is_initialized():
        # Never join whatever cluster a stale /tmp/ray file points at: RAY_ADDRESS (set by
        # `ray job submit`) or --address choose a cluster, else a fresh local Ray starts.
        ray.init(address=runtime.address or os.environ.get("RAY_ADDRESS") or "local")
    cluster = ray.cluster_resources()
    device, n_actors, resources, threads = _placement(runtime, cluster)
    print(f"Ray: {n_actors} {device} actor(s), {resources}")
    ran.update(device=device, actors=n_actors, threads=threads, resources=resources, decoders=0,
               writers=n_actors, cluster={k: cluster[k] for k in ("CPU", "GPU") if k in cluster})
    import ray.data

    # An actor that dies in its constructor (its process or node lost while it loads the
    # model) counts against this budget, and Ray Data's default of 0 fails the whole job.
    ray.data.DataContext.get_current().max_consecutive_actor_init_deaths = 3
    batches = [{**b, DEFER_COMMIT: True} for b in batches]  # the writer stage below commits them
    items = ray.data.from_items(batches, override_num_blocks=min(len(batches), MAX_BLOCKS))
    items.set_name(name)  # how the run shows in the dashboard's Ray Data view
    if decode is not None:
        n_decoders, decoder_cpus = _decode_placement(device, n_actors, resources, cluster)
        print(f"Ray: up to {n_decoders} decode actor(s), {decoder_cpus} CPU each")
        ran["decoders"] = n_decoders
        items = items.map(DecodeActor, fn_constructor_kwargs=decode, num_cpus=decoder_cpus,
                          compute=ray.data.ActorPoolStrategy(min_size=1, max_size=n_decoders))
    results = items.map(
        actor_cls,
        fn_constructor_kwargs={**actor_kwargs, "device": device, "batch_size": runtime.batch_size,
                               "threads": threads},
        compute=ray.data.ActorPoolStrategy(size=n_actors),
        **resources,
    )
    # The writer stage: object-store round trips off the compute actors (I/O, a little CPU).
    results = results.map(CommitActor, fn_constructor_kwargs={"out": actor_kwargs["out"],
                                                              "run_id": actor_kwargs.get("run_id")},
                          compute=ray.data.ActorPoolStrategy(min_size=1, max_size=n_actors), num_cpus=0.25)
    yield from results.iter_rows()


def print_failures(summary: dict) -> None:
    """One line per failed image of a run summary, after its "done:" line."""
    for err in summary["errors"]:
        print(f"  failed {err['image_id']}: {err['reason']}")


def exit_status(summary: dict) -> int:
    """A run's exit status: 1 when it failed (more failed images than --max-failures allows,
    or every image), saying why on stderr; 0 otherwise (a run with nothing to do included)."""
    if summary.get("status") == "failed":
        print(f"error: the run failed: {summary['why']} (run summary {summary.get('run_file')})", file=sys.stderr)
        return 1
    return 0


def software_versions() -> dict:
    """This package's version and git commit (when run from a checkout), and the versions of
    what it runs on, read from the installed metadata (the driver never imports torch)."""
    from importlib.metadata import PackageNotFoundError, version

    found = {"python": sys.version.split()[0]}
    for name in ("deep-spectral", "torch", "timm", "ray", "numpy", "pyarrow", "cupy-cuda13x", "cupy-cuda12x"):
        try:
            found[name] = version(name)
        except PackageNotFoundError:
            continue
    found["git_commit"] = git_commit()
    return found


def git_commit() -> str | None:
    """The checkout's HEAD commit (with "+dirty" when files differ), or None outside git."""
    import subprocess

    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    try:
        head = subprocess.run(["git", "-C", root, "rev-parse", "HEAD"], capture_output=True, text=True, timeout=10)
        if head.returncode:
            return None
        dirty = subprocess.run(["git", "-C", root, "status", "--porcelain", "--untracked-files=no"],
                               capture_output=True, text=True, timeout=10).stdout.strip()
        return head.stdout.strip() + ("+dirty" if dirty else "")
    except (OSError, subprocess.SubprocessError):
        return None
