"""The git steps of a worktree batch (worktreesteps.py), h11 style: feed events, assert the
whole state after every step, and what a start does at every point. Pure."""

from __future__ import annotations

import pytest

from batchd.worktreeplan import Problem
from batchd.worktreesteps import (
    RESTART,
    TRANSITIONS,
    Event,
    FeatureKey,
    GitSteps,
    Step,
    apply,
    on_restart,
)

F0, F1, F1B = (0, 1), (1, 1), (1, 2)  # (index, attempt): feature 1's second attempt is F1B


def walk(steps: GitSteps, events: list[tuple[Event, FeatureKey | None, GitSteps]]) -> GitSteps:
    """Apply each event and check the whole state after it."""
    for event, who, expected in events:
        steps = apply(steps, event, who)
        assert steps == expected, (event, who)
    return steps


def S(batch: Step, **features: Step) -> GitSteps:
    """A whole state: ``S("ready", f0="merging", f1="ready", f1b=...)``."""
    keys = {"f0": F0, "f1": F1, "f1b": F1B}
    return GitSteps(batch, {keys[k]: v for k, v in features.items()})


def test_a_parallel_batch_from_first_feature_to_its_end() -> None:
    """Two features in parallel; feature 1's merge conflicts and its second attempt, from
    the new tip, merges; the base is fast-forwarded and the worktrees go."""
    walk(
        GitSteps(),
        [
            ("create", None, S("creating")),
            ("created", None, S("ready")),
            ("create", F0, S("ready", f0="creating")),
            ("create", F1, S("ready", f0="creating", f1="creating")),
            ("created", F0, S("ready", f0="ready", f1="creating")),
            ("created", F1, S("ready", f0="ready", f1="ready")),
            ("merge", F0, S("ready", f0="merging", f1="ready")),
            ("merged", F0, S("ready", f0="merged", f1="ready")),
            ("remove", F0, S("ready", f0="removing", f1="ready")),
            ("merge", F1, S("ready", f0="removing", f1="merging")),
            ("removed", F0, S("ready", f0="removed", f1="merging")),
            ("unmerged", F1, S("ready", f0="removed", f1="unmerged")),
            ("remove", F1, S("ready", f0="removed", f1="removing")),
            ("removed", F1, S("ready", f0="removed", f1="removed")),
            ("create", F1B, S("ready", f0="removed", f1="removed", f1b="creating")),
            ("created", F1B, S("ready", f0="removed", f1="removed", f1b="ready")),
            ("merge", F1B, S("ready", f0="removed", f1="removed", f1b="merging")),
            ("merged", F1B, S("ready", f0="removed", f1="removed", f1b="merged")),
            ("remove", F1B, S("ready", f0="removed", f1="removed", f1b="removing")),
            ("kept", F1B, S("ready", f0="removed", f1="removed", f1b="kept")),
            ("forward", None, S("forwarding", f0="removed", f1="removed", f1b="kept")),
            ("forwarded", None, S("forwarded", f0="removed", f1="removed", f1b="kept")),
            ("remove", None, S("removing", f0="removed", f1="removed", f1b="kept")),
            ("removed", None, S("removed", f0="removed", f1="removed", f1b="kept")),
            # ``batchctl prune``: the kept worktree of an attempt goes.
            ("remove", F1B, S("removed", f0="removed", f1="removed", f1b="removing")),
            ("removed", F1B, S("removed", f0="removed", f1="removed", f1b="removed")),
        ],
    )


def test_a_sequential_batch_keeps_its_changed_worktree_until_prune() -> None:
    """A sequential batch has only its own worktree: made, kept (changes no commit holds),
    then removed by prune."""
    walk(
        GitSteps(),
        [
            ("create", None, S("creating")),
            ("created", None, S("ready")),
            ("remove", None, S("removing")),
            ("kept", None, S("kept")),
            ("remove", None, S("removing")),
            ("removed", None, S("removed")),
        ],
    )


def test_a_batch_cancelled_while_its_worktree_was_made_removes_it() -> None:
    """A cancel during the creation goes straight to removal (removal clears a half-made
    worktree too); so does a feature attempt cancelled while its worktree was made."""
    walk(
        S("ready"),
        [
            ("create", F0, S("ready", f0="creating")),
            ("remove", F0, S("ready", f0="removing")),
            ("removed", F0, S("ready", f0="removed")),
        ],
    )
    assert apply(S("creating"), "remove") == S("removing")


@pytest.mark.parametrize(
    ("steps", "event", "who", "words"),
    [
        (S("absent"), "created", None, "'created' does not apply to the batch's worktree"),
        (S("ready"), "merge", None, "'merge' does not apply to the batch's worktree"),
        (S("ready", f0="ready"), "forward", F0, "'forward' does not apply to feature 0.1"),
        (S("ready", f0="merged"), "merge", F0, "'merge' does not apply to feature 0.1"),
        (S("ready", f0="removed"), "create", F0, "'create' does not apply"),
        (S("removed"), "remove", None, "'remove' does not apply"),
        (S("creating"), "create", F0, "create needs the batch's worktree ready"),
        (S("removed", f0="ready"), "merge", F0, "merge needs the batch's worktree ready"),
        (S("ready", f0="merging", f1="ready"), "merge", F1, "one merge at a time; feature 0.1"),
        (S("ready", f0="ready"), "forward", None, "forward while feature attempts [(0, 1)]"),
        (S("ready", f0="merging"), "remove", None, "remove while feature attempts [(0, 1)]"),
        (S("ready", f0="merging"), "remove", F0, "'remove' does not apply to feature 0.1"),
    ],
)
def test_events_that_do_not_apply_are_refused_and_change_nothing(
    steps: GitSteps, event: Event, who: FeatureKey | None, words: str
) -> None:
    """The table and the rules between worktrees refuse what would lose track: a merge
    twice, two merges at once, a feature before its batch's worktree, the batch's end
    while a feature attempt still works."""
    before = steps
    with pytest.raises(Problem) as err:
        apply(steps, event, who)
    assert words in err.value.message
    assert steps == before


def test_every_entry_of_the_table_is_reachable_and_every_step_has_a_restart() -> None:
    """No step without a restart rule; every begun step is repeated, every made worktree
    is checked, every ended step needs nothing."""
    targets = set(TRANSITIONS.values()) | {"absent"}
    assert targets == set(RESTART)
    assert {s for s, r in RESTART.items() if r not in (None, "check")} == {
        "creating",
        "merging",
        "forwarding",
        "removing",
    }


@pytest.mark.parametrize(
    ("steps", "plan"),
    [
        (S("absent"), []),
        (S("creating"), [(None, "create")]),
        (S("ready"), [(None, "check")]),
        (
            S("ready", f0="merging", f1="creating", f1b="ready"),
            [(None, "check"), (F0, "merge"), (F1, "create"), (F1B, "check")],
        ),
        (
            S("ready", f0="removing", f1="merged", f1b="unmerged"),
            [(None, "check"), (F0, "remove")],
        ),
        (S("forwarding", f0="removed", f1="kept"), [(None, "forward")]),
        (S("removing", f0="removing"), [(F0, "remove"), (None, "remove")]),
        (S("kept", f0="removed"), []),
        (S("removed"), []),
    ],
)
def test_what_a_start_does_at_every_point(
    steps: GitSteps, plan: list[tuple[FeatureKey | None, str]]
) -> None:
    """The batch's worktree is made whole first (a merge needs it), then the begun merge,
    then the other attempts' worktrees, then the batch's own last step."""
    assert on_restart(steps) == plan
