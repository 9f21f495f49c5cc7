"""`hone jobs`: the jobs on a Ray cluster, through its Jobs API (the dashboard port, 8265).

    hone jobs list               --address http://127.0.0.1:8265
    hone jobs status JOB_ID      --address http://127.0.0.1:8265
    hone jobs logs JOB_ID [--follow] --address http://127.0.0.1:8265
    hone jobs stop JOB_ID        --address http://127.0.0.1:8265

--address defaults to $RAY_ADDRESS. A cluster started with token auth (RAY_AUTH_MODE=token) needs its
token, read from --token-file, else $RAY_AUTH_TOKEN, $RAY_AUTH_TOKEN_PATH or ~/.ray/auth_token (Ray's
own order). The token travels only in the Authorization header of each request; hone never prints it.
"""

from __future__ import annotations

import argparse
import asyncio
import ipaddress
import os
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar
from urllib.parse import urlparse

from hone.training.errors import HoneError

# A cluster that does not answer within this time is reported instead of waited on (a firewalled or
# mistyped host would otherwise hang for the OS's TCP timeout, minutes).
CONNECT_TIMEOUT_S = 10.0
TERMINAL = ("SUCCEEDED", "FAILED", "STOPPED")
T = TypeVar("T")


class JobsError(HoneError, RuntimeError):
    """The cluster could not be reached, refused us, or refused the request; nothing was created."""


def read_token(token_file: str | None, remote: bool = False) -> tuple[str | None, str]:
    """The token and where it came from (for messages; the token itself is never shown). For a remote
    address Ray's own ~/.ray/auth_token is not used: on any machine that ran `hone run` it holds the
    embedded local cluster's token, which must never reach another host; name the file instead."""
    candidates: list[tuple[str, str | None]] = [
        (f"--token-file {token_file}", token_file),
        ("$RAY_AUTH_TOKEN", None),
        ("$RAY_AUTH_TOKEN_PATH", os.environ.get("RAY_AUTH_TOKEN_PATH")),
    ]
    if not remote:
        candidates.append(("~/.ray/auth_token", str(Path.home() / ".ray" / "auth_token")))
    for source, path in candidates:
        if source == "$RAY_AUTH_TOKEN":
            token = os.environ.get("RAY_AUTH_TOKEN", "").strip()
        elif path is None or (source == "~/.ray/auth_token" and not Path(path).is_file()):
            continue
        else:
            token = _read_token_file(Path(path).expanduser(), source)
        if token:
            return token, source
    return None, ""


def _read_token_file(path: Path, source: str) -> str:
    if not path.is_file():
        raise JobsError(f"{source}: no such file; give the file holding the cluster's token (ray get-auth-token prints it)")
    token = path.read_text().strip()
    if not token:
        raise JobsError(f"{source} is empty; it must hold the cluster's token")
    return token


def dashboard_address(address: str | None) -> str:
    """The Jobs API's http(s) URL from --address or $RAY_ADDRESS."""
    address = (address or os.environ.get("RAY_ADDRESS", "")).strip().rstrip("/")
    if not address:
        raise JobsError("no cluster address: pass --address http://HEAD:8265 (the dashboard port) or set RAY_ADDRESS")
    if address.startswith("ray://") or address in ("auto", "local"):
        raise JobsError(
            f"--address {address}: hone submit and hone jobs talk to the dashboard's Jobs API; "
            "use http://HEAD:8265 (through an SSH tunnel or kubectl port-forward: http://127.0.0.1:8265)"
        )
    return address if "://" in address else f"http://{address}"


def is_loopback(url: str) -> bool:
    host = urlparse(url).hostname or ""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:  # a host name: it may resolve anywhere
        return False


def connect(
    address: str | None, token_file: str | None, insecure_http: bool = False, timeout_s: float = CONNECT_TIMEOUT_S
) -> Any:
    """A JobSubmissionClient for a cluster that answered, and accepted our token, within `timeout_s`."""
    from ray.job_submission import JobSubmissionClient

    url = dashboard_address(address)
    remote = not is_loopback(url)
    token, source = read_token(token_file, remote=remote)
    if token and remote and url.startswith("http://") and not insecure_http:
        raise JobsError(
            f"refusing to send the cluster token in clear text to {url}: use https://, or a tunnel "
            "(ssh -L 8265:localhost:8265 HEAD, kubectl port-forward) and --address http://127.0.0.1:8265; "
            "--insecure-http sends it anyway"
        )
    # Passed as our own header: Ray's client adds the token only when RAY_AUTH_MODE=token is set in
    # this process, and from its own sources; an explicit header makes the one hone chose the one used.
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    _probe(url, headers, source, timeout_s)
    return guarded(url, lambda: JobSubmissionClient(url, headers=headers))


def _probe(url: str, headers: dict[str, str], source: str, timeout_s: float) -> None:
    import requests

    try:
        response = requests.get(f"{url}/api/version", headers=headers, timeout=timeout_s)
    except requests.Timeout:
        raise JobsError(
            f"the Ray cluster at {url} did not answer within {timeout_s:g} s; check the address and the tunnel"
        ) from None
    except requests.RequestException as err:
        raise JobsError(
            f"could not reach the Ray cluster at {url} ({type(err).__name__}); is the head up and the tunnel open?"
        ) from None
    _check_auth(url, response.status_code, source)
    if response.status_code != 200:
        raise JobsError(f"{url} answered {response.status_code} to /api/version; is it a Ray dashboard (port 8265)?")


def _check_auth(url: str, status: int, source: str) -> None:
    if status == 401:
        raise JobsError(
            f"the cluster at {url} requires a token: set RAY_AUTH_TOKEN or --token-file (ray get-auth-token on the head prints it)"
        )
    if status == 403:
        raise JobsError(f"the token was rejected by the cluster at {url} (token from {source}); use the head node's token")


def guarded(url: str, call: Callable[[], T]) -> T:
    """Run one Jobs API call, turning Ray's errors into a JobsError that names the address."""
    import requests
    from ray.exceptions import AuthenticationError

    try:
        return call()
    except AuthenticationError as err:
        _check_auth(url, 403 if "Authentication failed" in str(err) else 401, "the request")
        raise
    except requests.RequestException as err:
        raise JobsError(f"lost the connection to the Ray cluster at {url} ({type(err).__name__})") from None
    except RuntimeError as err:  # the client's "Request failed with status code 404: Job ... does not exist"
        raise JobsError(f"{url}: {err}") from None


def wait(client: Any, job_id: str, timeout_s: float | None = None) -> str:
    """Poll until the job reaches SUCCEEDED, FAILED or STOPPED (or `timeout_s` passes); its status."""
    deadline = None if timeout_s is None else time.monotonic() + timeout_s
    while True:
        status = str(guarded(client.get_address(), lambda: client.get_job_status(job_id)).value)
        if status in TERMINAL or (deadline is not None and time.monotonic() > deadline):
            return status
        time.sleep(1.0)


def follow(client: Any, job_id: str) -> str:
    """Print the job's output as it comes until the job ends; its final status."""

    async def tail() -> None:
        async for chunk in client.tail_job_logs(job_id):
            print(chunk, end="", flush=True)

    try:
        guarded(client.get_address(), lambda: asyncio.run(tail()))
    except KeyboardInterrupt:
        print(f"\nhone: stopped following; job {job_id} goes on (hone jobs stop {job_id} ends it)", flush=True)
        raise SystemExit(130) from None
    return wait(client, job_id)


def jobs_command(args: argparse.Namespace) -> int:
    client = connect(args.address, args.token_file, args.insecure_http)
    url = client.get_address()
    if args.action == "list":
        jobs = guarded(url, client.list_jobs)
        print(f"{'job id':<30}{'status':<12}{'started':<21}entrypoint")
        for job in sorted(jobs, key=lambda j: j.start_time or 0):
            started = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(job.start_time / 1000)) if job.start_time else "-"
            print(f"{job.submission_id or job.job_id or '-':<30}{job.status.value:<12}{started:<21}{job.entrypoint}")
        return 0
    if args.action == "status":
        info = guarded(url, lambda: client.get_job_info(args.job_id))
        print(f"{args.job_id}: {info.status.value}" + (f" ({info.message})" if info.message else ""))
        return 0
    if args.action == "logs":
        if args.follow:
            status = follow(client, args.job_id)
            print(f"hone: job {args.job_id} {status}")
            return 0 if status == "SUCCEEDED" else 1
        print(guarded(url, lambda: client.get_job_logs(args.job_id)), end="")
        return 0
    stopped = guarded(url, lambda: client.stop_job(args.job_id))
    status = wait(client, args.job_id, timeout_s=60)
    print(f"hone: job {args.job_id} {status}" + ("" if stopped else " (it was not running)"))
    return 0


def add_client_options(cmd: argparse.ArgumentParser) -> None:
    cmd.add_argument("--address", default=None, help="the cluster's Jobs API, http://HEAD:8265 (default: $RAY_ADDRESS)")
    cmd.add_argument(
        "--token-file",
        default=None,
        help="file holding the cluster's auth token (default: $RAY_AUTH_TOKEN, then Ray's token file for 127.0.0.1)",
    )
    cmd.add_argument(
        "--insecure-http",
        action="store_true",
        help="send the token over plain http to a host that is not 127.0.0.1 (it can be read on the way)",
    )


def add_jobs_parser(sub: Any) -> None:
    jobs = sub.add_parser("jobs", help="list, inspect, follow or stop jobs on a Ray cluster")
    actions = jobs.add_subparsers(dest="action", required=True)
    add_client_options(actions.add_parser("list", help="every job on the cluster"))
    for name, text in (("status", "a job's status"), ("logs", "a job's output"), ("stop", "stop a running job")):
        cmd = actions.add_parser(name, help=text)
        cmd.add_argument("job_id", help="the id hone submit printed (raysubmit_...)")
        add_client_options(cmd)
        if name == "logs":
            cmd.add_argument("--follow", action="store_true", help="keep printing until the job ends; exit 1 unless it succeeded")
