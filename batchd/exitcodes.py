"""The exit statuses of the ``batchd`` daemon, which systemd acts on (SPEC sections 9 and 16).

A leaf: no imports. The unit template ``batchd/units/batchd.service`` spells
the same numbers (``RestartPreventExitStatus=``, ``RestartForceExitStatus=``,
``SuccessExitStatus=``, the stop sweep of ``ExecStopPost=``); a test keeps the
two equal.
"""

from __future__ import annotations

EXIT_OK = 0
"""A clean stop: the daemon stopped its runners itself (SIGTERM, ``runner.on_stop = "stop"``).
Under systemd the unit then ends whatever is left in its cgroup."""

EXIT_FATAL = 1
"""A fatal runtime error (another instance, an unusable state dir): systemd restarts it
(``Restart=on-failure``) until the start limit."""

EXIT_RESTART = 75
"""The daemon left its runners running on purpose and wants to be started again
(``batchctl restart``; SIGTERM with ``runner.on_stop = "leave"``). The unit restarts it
(``RestartForceExitStatus=``) unless a stop was asked, counts it as a success
(``SuccessExitStatus=``) and never ends the runners it left. 75 is sysexits'
``EX_TEMPFAIL`` ("try again"); it is not 0, 1, 2 (usage) or 78, and systemd's own
statuses for a failed start are 200 and above."""

EX_CONFIG = 78
"""A bad configuration (sysexits' ``EX_CONFIG``): systemd does not restart it
(``RestartPreventExitStatus=``); ``check-config`` exits 78 too."""
