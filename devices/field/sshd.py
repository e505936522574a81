"""One OpenSSH server per board, listening on the board's address inside its namespace.

The board is reached exactly as a Raspberry Pi is: ``ssh -i <field key> root@<board address>``,
so `parse-edge flash --inventory` needs nothing field-specific. Every board shares the host's
file system (a network namespace isolates the network only), so each board gets its own prefix
directory instead of its own disk; the login user is root because the field creates no users.
"""

from __future__ import annotations

from pathlib import Path

from devices.field import daemons
from devices.field.plan import SSH_PORT, BoardPlan

# sshd(8): "Missing privilege separation directory" when absent.
PRIVSEP_DIR = Path("/run/sshd")


def sshd_config(board: BoardPlan, host_key: Path, authorized_keys: Path, pid_file: Path) -> str:
    """Render one board's sshd_config (sshd_config(5)): key login as root, on its address only."""
    return "\n".join([
        f"# parse-edge field board {board.id} (namespace {board.netns})",
        f"ListenAddress {board.address}:{SSH_PORT}",
        f"HostKey {host_key}",
        f"PidFile {pid_file}",
        f"AuthorizedKeysFile {authorized_keys}",
        "PermitRootLogin prohibit-password",
        "PubkeyAuthentication yes",
        "PasswordAuthentication no",
        "KbdInteractiveAuthentication no",
        # No PAM: no session modules to configure for a throw-away server, and no login records.
        "UsePAM no",
        "StrictModes yes",
        "X11Forwarding no",
        "PrintMotd no",
        "UseDNS no",
        # scp uses the SFTP protocol since OpenSSH 9.0; internal-sftp needs no helper binary.
        "Subsystem sftp internal-sftp",
        "",
    ])


def start_sshd(sshd: str, board: BoardPlan, conf: Path, log: Path,
               timeout_s: float = 10.0) -> int:
    """Start sshd in the board's namespace (foreground, logging to `log`); return its pid.

    Raises
    ------
    DaemonError
        When sshd exits or does not listen on the board's address within `timeout_s`.
    """
    # sshd refuses to start without its privilege separation directory; Debian's service
    # creates it at boot (RuntimeDirectory=sshd), which a machine that never started the
    # service - a container, a fresh CI runner - has not done.
    PRIVSEP_DIR.mkdir(mode=0o755, parents=True, exist_ok=True)
    pid = daemons.spawn_in_netns(board.netns, [sshd, "-D", "-e", "-f", str(conf)], log)
    daemons.wait_listening(pid, str(board.address), SSH_PORT, log, f"sshd of board {board.id}",
                           timeout_s)
    return pid
