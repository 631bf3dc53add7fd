"""The default deadline of a push: what is left of the GitLab job, else an hour.

A push that outlives its CI job is killed by the runner with a message about the job, not about
the registry that hung; ending a little earlier says what hung, and leaves time for the job's
``after_script``. GitLab tells a job its timeout (``CI_JOB_TIMEOUT``, seconds, since GitLab
15.7) and when it started (``CI_JOB_STARTED_AT``, ISO 8601 UTC).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Mapping
from datetime import datetime

log = logging.getLogger(__name__)

DEFAULT_TIMEOUT = 3600.0
MIN_TIMEOUT = 30.0  # a job almost out of time still gets a chance, not an instant failure
# Kept for the job after ociforge gives up: its own error message, after_script, artifacts.
CI_MARGIN_FRACTION = 0.05
CI_MARGIN_MIN = 60.0


def default_timeout(env: Mapping[str, str], now: float | None = None) -> float:
    """Seconds a push may take: the GitLab job's remaining time minus a margin, when the job
    says how long it may run; else :data:`DEFAULT_TIMEOUT`. ``now`` is a Unix time."""
    try:
        job_timeout = float(env.get("CI_JOB_TIMEOUT", ""))
    except ValueError:
        return DEFAULT_TIMEOUT
    if job_timeout <= 0:
        return DEFAULT_TIMEOUT
    left = job_timeout
    started = _parse_time(env.get("CI_JOB_STARTED_AT", ""))
    if started is not None:
        left = started + job_timeout - (time.time() if now is None else now)
    margin = max(CI_MARGIN_MIN, job_timeout * CI_MARGIN_FRACTION)
    chosen = max(MIN_TIMEOUT, left - margin)
    log.debug("deadline from the GitLab job: %.0f s left, push timeout %.0f s", left, chosen)
    return chosen


def _parse_time(text: str) -> float | None:
    """``2024-05-01T10:00:00Z`` -> Unix time; None when absent or unreadable."""
    if not text:
        return None
    try:
        parsed = datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        return None
    if parsed.tzinfo is None:
        return None  # GitLab always says UTC with a Z; a local time would be a guess
    return parsed.timestamp()
