"""The git steps of a worktree batch (SPEC 15), as a state machine: one table. Pure.

As h11 keeps its connection states: the steps a worktree goes through, the events that
move it, one table ``TRANSITIONS`` ((role, step, event) -> step), and ``RESTART``: what a
start of batchd does for each recorded step. ``GitSteps`` is the whole git state of one
batch (its own worktree and the worktree of each attempt of a parallel feature); ``apply``
refuses an event that does not apply, and what must hold across worktrees (one merge at
a time; nothing of a feature before its batch's worktree; the batch ends last).

Design note: crash safety is "record, do, record". Before a git step the caller writes
the step's begun state (``creating``, ``merging``, ``forwarding``, ``removing``)
durably, then does it, then writes its end. A kill -9 anywhere leaves either the state
before (nothing done, or done and not yet recorded: doing it again finds it done) or the
begun state, and a start repeats the begun step (``RESTART``). Every step is written so
that it finishes or undoes what a half-done run of itself left.

Each step: what is recorded before it and after it, the git work, and what a start
that finds "before" recorded does.

record repo: before nothing; ``record_repo`` (rev-parse, symbolic-ref: read only);
    after, the ``git`` record. Start: nothing was made; the first feature records again.
create: before ``creating``; ``ensure_worktree`` (``worktree add -b BRANCH DIR START``);
    after ``ready``. Start: ``ensure_worktree`` again. It reuses a whole worktree,
    clears a half-made one (git's "initializing" lock, a directory without a record, a
    record without a directory), keeps a branch made before and never moves it, and
    adds what is missing.
run agent: ``ready`` before and after (the attempt is SPEC 5's record). Start: check,
    i.e. ``ensure_worktree``: a worktree removed by hand is made again on its branch.
merge: before ``merging``; ``merge_feature`` (``merge --no-ff`` in the batch's worktree;
    a conflict listed and aborted); after ``merged`` or ``unmerged``. Start:
    ``merge_feature`` again. It waits for an earlier git there to end, removes a stale
    index.lock, aborts a half merge (MERGE_HEAD), restores the tree, and a feature head
    already in the batch branch is done: nothing is merged twice.
fast-forward: before ``forwarding``; ``fast_forward_base`` (``update-ref BASE NEW OLD``);
    after ``forwarded``. Start: ``fast_forward_base`` again: a base already at the batch
    tip is done, a base that moved is refused, never overwritten.
remove: before ``removing``; ``remove_worktree`` (status: kept when changed; rename to
    ``DIR.removing``; ``worktree remove -f -f``; the trash deleted); after ``removed`` or
    ``kept``. Start: ``remove_worktree`` again (with the same ``discard``: record it): a
    renamed directory is finished, a whole one is checked for changes again. The rename
    is one step, so a half-deleted worktree never looks like one with changes.

The branch of a feature attempt is never moved and never deleted before its commits are
in the batch branch (``worktreemerge.drop_merged_branch``), so no commit an agent made
becomes unreachable. The batch branch only moves by merges into it.

Never: run git, touch a file, decide a feature's outcome (a conflict is a transient
failure: ``batch``/``feature`` decide that).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from typing import Literal

from batchd.model import GitStep
from batchd.worktreeplan import Problem

Role = Literal["batch", "feature"]
Step = GitStep  # the steps, each with its meaning, are in ``model`` (they are recorded)
Event = Literal[
    "create",
    "created",
    "merge",
    "merged",
    "unmerged",
    "forward",
    "forwarded",
    "remove",
    "removed",
    "kept",
]
Redo = Literal["create", "check", "merge", "forward", "remove"]
FeatureKey = tuple[int, int]  # (feature index, attempt)

_FEATURE_REMOVABLE: tuple[Step, ...] = ("ready", "merged", "unmerged", "kept", "creating")
TRANSITIONS: dict[tuple[Role, Step, Event], Step] = {
    ("batch", "absent", "create"): "creating",
    ("batch", "creating", "created"): "ready",
    ("batch", "ready", "forward"): "forwarding",
    ("batch", "forwarding", "forwarded"): "forwarded",
    ("feature", "absent", "create"): "creating",
    ("feature", "creating", "created"): "ready",
    ("feature", "ready", "merge"): "merging",
    ("feature", "merging", "merged"): "merged",
    ("feature", "merging", "unmerged"): "unmerged",
    # Removal: at the end of an attempt (feature) or of the batch; ``kept`` -> removing
    # is ``batchctl prune``; ``creating`` -> removing is a cancel while it was made.
    **{("feature", s, "remove"): "removing" for s in _FEATURE_REMOVABLE},
    **{("batch", s, "remove"): "removing" for s in ("ready", "forwarded", "kept", "creating")},
    **{(r, "removing", "removed"): "removed" for r in ("batch", "feature")},
    **{(r, "removing", "kept"): "kept" for r in ("batch", "feature")},
    # Made again: a finished batch whose failed features ``batchctl retry`` runs again
    # (its worktree removed, or kept and reused as it is).
    **{("batch", s, "create"): "creating" for s in ("removed", "kept")},
}

# What a start of batchd does for a recorded step: repeat the begun step, check a made
# worktree (``ensure_worktree``, which makes a missing one again), or nothing.
RESTART: dict[Step, Redo | None] = {
    "absent": None,
    "creating": "create",
    "ready": "check",
    "merging": "merge",
    "merged": None,
    "unmerged": None,
    "forwarding": "forward",
    "forwarded": None,
    "removing": "remove",
    "removed": None,
    "kept": None,
}
_LIVE: frozenset[Step] = frozenset({"creating", "ready", "merging"})


@dataclass(frozen=True)
class GitSteps:
    """The git state of one batch: its worktree's step and each feature attempt's."""

    batch: Step = "absent"
    features: Mapping[FeatureKey, Step] = field(default_factory=dict)

    def feature(self, key: FeatureKey) -> Step:
        return self.features.get(key, "absent")

    def merging(self) -> FeatureKey | None:
        return next((k for k, s in self.features.items() if s == "merging"), None)


def apply(steps: GitSteps, event: Event, feature: FeatureKey | None = None) -> GitSteps:
    """The state after ``event`` of the batch's worktree (``feature`` None) or of the
    worktree of one feature attempt; ``Problem`` when it does not apply."""
    role: Role = "batch" if feature is None else "feature"
    now = steps.batch if feature is None else steps.feature(feature)
    after = TRANSITIONS.get((role, now, event))
    who = "the batch's worktree" if feature is None else f"feature {feature[0]}.{feature[1]}"
    if after is None:
        raise Problem(f"git step {event!r} does not apply to {who} at {now!r}")
    _check_across(steps, role, event, feature, who)
    if feature is None:
        return replace(steps, batch=after)
    return replace(steps, features={**steps.features, feature: after})


def _check_across(
    steps: GitSteps, role: Role, event: Event, feature: FeatureKey | None, who: str
) -> None:
    """The rules between worktrees."""
    if role == "feature" and event in ("create", "merge") and steps.batch != "ready":
        raise Problem(f"{who}: {event} needs the batch's worktree ready, not {steps.batch!r}")
    if event == "merge" and steps.merging() not in (None, feature):
        other = steps.merging()
        assert other is not None
        raise Problem(f"{who}: one merge at a time; feature {other[0]}.{other[1]} is merging")
    if role == "batch" and event in ("forward", "remove") and steps.batch != "creating":
        live = sorted(k for k, s in steps.features.items() if s in _LIVE)
        if live:
            raise Problem(f"{who}: {event} while feature attempts {live} are not done")


def on_restart(steps: GitSteps) -> list[tuple[FeatureKey | None, Redo]]:
    """What a start does, in order: the batch's worktree first when it is made or being
    made (a feature's merge needs it), then the merge that was begun, then the other
    feature worktrees, then the batch's own last step (its fast-forward or removal)."""
    first: list[tuple[FeatureKey | None, Redo]] = []
    last: list[tuple[FeatureKey | None, Redo]] = []
    redo = RESTART[steps.batch]
    if redo is not None:
        (first if redo in ("create", "check") else last).append((None, redo))
    merges = [(k, r) for k, s in sorted(steps.features.items()) if (r := RESTART[s]) == "merge"]
    others = [
        (k, r)
        for k, s in sorted(steps.features.items())
        if (r := RESTART[s]) is not None and r != "merge"
    ]
    return [*first, *merges, *others, *last]
