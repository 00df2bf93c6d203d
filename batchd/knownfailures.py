"""The failure texts batchd knows before any configuration (SPEC sections 6, 12 and 13).

Owns the tables ``classify`` judges with: the seed transient and permanent
patterns (``[classify]`` adds to them, never replaces them), what the agents
print for a network outage, the Claude results no retry can help, the API
statuses worth a retry, and the cluster end states that decide an outcome
whatever the exit status says. Data only: it never judges an attempt (that is
``classify``'s) and imports nothing of batchd but the outcome names.
"""

from __future__ import annotations

from batchd.model import FailureType, Outcome

SEED_TRANSIENT = (
    r"connectionerror",
    r"timeouterror",
    r"ratelimiterror",
    r"networkerror",
    r"httperror.*50[234]",
    r"httperror.*429",
    r"temporaryfailure",
    r"service.*unavailable",
    r"bad.*gateway",
    r"gateway.*timeout",
    r"too.*many.*requests",
    r"connection.*refused",
    r"connection.*reset",
    r"operation.*timed.*out",
    r"timed.*out",
    r"network.*unreachable",
    r"overloaded",
    r"rate[ _-]?limit",
)
# What the agents print for a network outage (SPEC 6; tests/data/agents has real texts).
# The error codes as words: "modulenotfounderror" is not "enotfound".
NETWORK_TRANSIENT = (
    r"can(?:'|\u2019)?t reach the api",
    r"\benotfound\b",
    r"\beai_again\b",
    r"\beconnreset\b",
    r"\beconnrefused\b",
    r"\betimedout\b",
    r"stream disconnected",
    r"failed to lookup address",
    r"error sending request",
    r"api error: 5\d\d",
    r"internal server error",
)
SEED_PERMANENT = (
    r"syntaxerror",
    r"importerror",
    r"typeerror",
    r"nameerror",
    r"attributeerror",
    r"valueerror",
    r"indentationerror",
    r"keyerror",
    r"indexerror",
    r"assertionerror",
    r"modulenotfounderror",
    r"filenotfounderror",
    r"permissionerror",
    r"zerodivisionerror",
    r"notimplementederror",
    r"recursionerror",
)
# Claude results that no retry can help: the flag of runner.command to raise (SPEC 13).
CLAUDE_CAPS = {
    "error_max_turns": "the agent reached its turn limit; raise --max-turns in runner.command",
    "error_max_budget_usd": (
        "the agent reached its budget; raise --max-budget-usd in runner.command"
    ),
}
TRANSIENT_API_STATUS = frozenset({429, 500, 502, 503, 529})


# SPEC section 12: the end states of a cluster job that decide the outcome whatever the
# exit status says. A CANCELLED that batchd asked for never gets here: that run is
# ``interrupted`` or ``timed_out`` already.
CLUSTER_END_STATES: dict[str, tuple[Outcome, FailureType, str]] = {
    "TIMEOUT": ("timed_out", "transient", "the cluster's time limit ended the job (TIMEOUT)"),
    "NODE_FAIL": ("failed", "transient", "the job's node failed (NODE_FAIL)"),
    "PREEMPTED": ("failed", "transient", "the job was preempted (PREEMPTED)"),
    "BOOT_FAIL": ("failed", "transient", "the job's node failed to boot (BOOT_FAIL)"),
    "CANCELLED": ("failed", "transient", "the job was cancelled outside batchd (CANCELLED)"),
    "OUT_OF_MEMORY": ("failed", "permanent", "the job ran out of memory (OUT_OF_MEMORY)"),
}
