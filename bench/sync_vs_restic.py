"""Hakobune's daily sync against restic, side by side, on the same synthetic tree and the same sshd.

    .venv/bin/python bench/sync_vs_restic.py [--files 200000] [--keep]

Both tools back the tree up over SFTP to one OpenSSH sshd on 127.0.0.1: Hakobune into its append-only
hospital inbox (then the center ingests), restic into a repository in a second chrooted account. The
run does a baseline, then one synthetic day (about 1% of files new or renamed, `hakobune synth
--advance 1`), then the daily incremental of each tool, and prints wall time, CPU time, peak RSS (the
largest process, as GNU time reports it, and the sum over the command's processes), bytes sent and at rest.

Hakobune's incremental is measured twice: with the SS-MIX2 gateway's transaction journal (TR_*.DAT;
O(changes)) and with a names-only walk of the whole tree (no journal).  Needs root (sshd, accounts).
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench._common import PeakRSS, mb, synthetic_tree
from center.catalog import Catalog
from center.config import load_center_config
from center.ingest import ingest_all
from center.layout import CenterLayout
from center.sshd import write_sshd
from hakobune.keys import RecipientPrivateKey
from hakobune.provision import provision_local
from hakobune.synth import advance

ROOT = Path("/var/lib/hakobune-bench")
HOSPITAL = "BENCH01"
RESTIC_USER = "hkbrestic"
HAKOBUNE = str(Path(sys.executable).parent / "hakobune")
RESTIC_PASSWORD = "bench-only-password"
#: Issue 3's target for the daily sync's peak RSS, in bytes (MB here are 10^6 bytes, as ``mb`` prints them).
TARGET_RSS = 64_000_000


@dataclass
class Run:
    what: str
    wall: float
    cpu: float
    rss_single: int
    rss_total: int
    sent: int
    at_rest: int


def timed(cmd: list[str], env: dict[str, str] | None = None) -> tuple[float, float, int, int, str]:
    """Run ``cmd`` under GNU time: (wall s, cpu s, max RSS bytes (largest process), peak tree RSS, stdout)."""
    with PeakRSS(include_self=False) as peak:
        t0 = time.perf_counter()
        proc = subprocess.run(
            ["/usr/bin/time", "-v", *cmd], capture_output=True, text=True, env={**os.environ, **(env or {})}
        )
        wall = time.perf_counter() - t0
    if proc.returncode != 0:
        raise SystemExit(f"{cmd[0]} failed ({proc.returncode}): {proc.stderr[-2000:]}")
    user = float(re.search(r"User time \(seconds\): ([\d.]+)", proc.stderr).group(1))  # type: ignore[union-attr]
    system = float(re.search(r"System time \(seconds\): ([\d.]+)", proc.stderr).group(1))  # type: ignore[union-attr]
    rss = int(re.search(r"Maximum resident set size \(kbytes\): (\d+)", proc.stderr).group(1)) * 1024  # type: ignore[union-attr]
    return wall, user + system, rss, peak.peak_total, proc.stdout


def du(path: Path) -> int:
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file()) if path.exists() else 0


def drop_caches() -> None:
    subprocess.run(["sync"], check=False)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--files", type=int, default=200_000, help="at least this many files in the tree")
    ap.add_argument("--keep", action="store_true", help="keep the scratch folder")
    args = ap.parse_args()
    if os.geteuid() != 0 or not shutil.which("restic"):
        raise SystemExit("needs root and restic (make bench installs restic)")

    load_start = " ".join(f"{x:.2f}" for x in os.getloadavg())
    source = synthetic_tree(args.files).parent
    shutil.rmtree(ROOT, ignore_errors=True)
    ROOT.mkdir(parents=True, mode=0o755)
    hospital = ROOT / "hospital"
    print(f"copying the synthetic tree ({source}) …", flush=True)
    subprocess.run(["cp", "-a", str(source), str(hospital)], check=True)
    ssmix2 = hospital / "ssmix2"
    journal = hospital / "journal"
    journal.mkdir(exist_ok=True)
    files = sum(1 for _ in ssmix2.rglob("*_*_*"))

    release = RecipientPrivateKey.generate()
    center_home = ROOT / "center"
    provision_local(
        hospital=HOSPITAL,
        ssmix2=ssmix2,
        center_home=center_home,
        agent_home=ROOT / "agent",
        release=release.public,
        journal=journal,
    )
    provision_local(  # a second agent on the same tree without the journal: the walk path
        hospital="BENCH02",
        ssmix2=ssmix2,
        center_home=center_home,
        agent_home=ROOT / "agent-walk",
        release=release.public,
    )
    layout = CenterLayout(center_home)

    # restic's account: a plain chrooted SFTP account (restic needs rename and delete for its locks).
    subprocess.run(
        ["useradd", "--system", "--no-create-home", "--shell", "/usr/sbin/nologin", RESTIC_USER],
        capture_output=True,
        check=False,
    )
    subprocess.run(["usermod", "-p", "*", RESTIC_USER], check=True)
    restic_root = ROOT / "restic-root"
    (restic_root / "repo").mkdir(parents=True)
    os.chmod(restic_root, 0o755)
    shutil.chown(restic_root / "repo", RESTIC_USER, RESTIC_USER)
    ssh_key = ROOT / "restic_ed25519"
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(ssh_key)], check=True)

    def ssh_line(agent_home: Path) -> str:
        return (agent_home / "keys" / "ssh_ed25519.pub").read_text().strip()

    port = 22000 + os.getpid() % 1000
    config = write_sshd(
        layout,
        {HOSPITAL: ssh_line(ROOT / "agent"), "BENCH02": ssh_line(ROOT / "agent-walk")},
        listen="127.0.0.1",
        port=port,
    )
    text = config.read_text()
    text = re.sub(r"^AllowUsers (.*)$", rf"AllowUsers \1 {RESTIC_USER}", text, flags=re.M)
    text += f"\nMatch User {RESTIC_USER}\n    ChrootDirectory {restic_root}\n    ForceCommand internal-sftp\n"
    config.write_text(text)
    auth = layout.sshd / "authorized_keys" / RESTIC_USER
    auth.write_text(ssh_key.with_suffix(".pub").read_text())
    os.chmod(auth, 0o644)
    Path("/run/sshd").mkdir(exist_ok=True)
    sshd = subprocess.Popen(["/usr/sbin/sshd", "-D", "-e", "-f", str(config)], stderr=subprocess.DEVNULL)
    time.sleep(1.0)
    try:
        from center.sshd import host_key_line

        line = host_key_line(layout, "127.0.0.1", port)
        for agent_home, hid in ((ROOT / "agent", HOSPITAL), (ROOT / "agent-walk", "BENCH02")):
            (agent_home / "keys" / "known_hosts").write_text(line + "\n")
            toml = agent_home / "agent.toml"
            toml.write_text(
                re.sub(
                    r'^url = ".*"$',
                    f'url = "sftp://hkb-{hid.lower()}@127.0.0.1:{port}"',
                    toml.read_text(),
                    flags=re.M,
                )
            )
        known = ROOT / "known_hosts"
        known.write_text(line + "\n")
        sftp_cmd = (
            f"ssh -i {ssh_key} -p {port} -o UserKnownHostsFile={known} -o BatchMode=yes "
            f"{RESTIC_USER}@127.0.0.1 -s sftp"
        )
        cache = ROOT / "restic-cache"  # restic's normal local cache (as a hospital would run it)
        restic = [
            "restic",
            "-r",
            "sftp::/repo",
            "-o",
            f"sftp.command={sftp_cmd}",
            "--cache-dir",
            str(cache),
            "-q",
        ]
        env = {"RESTIC_PASSWORD": RESTIC_PASSWORD}
        subprocess.run([*restic, "init"], check=True, env={**os.environ, **env}, capture_output=True)
        cfg = load_center_config(center_home)

        def hakobune(home: Path, hid: str, what: str) -> Run:
            store_before = du(layout.home / "store")
            wall, cpu, rss, total, _out = timed([HAKOBUNE, "agent", "sync", "--json", "--home", str(home)])
            with Catalog.open(cfg.catalog_url) as catalog:
                t0 = time.perf_counter()
                ingest_all(cfg, catalog)
                ingest_s = time.perf_counter() - t0
            sent = du(layout.home / "store") - store_before
            print(f"  {what}: sync {wall:.2f} s + center ingest {ingest_s:.2f} s", flush=True)
            return Run(what, wall, cpu, rss, total, sent, du(layout.home / "store" / hid))

        def restic_run(what: str) -> Run:
            before = du(restic_root / "repo")
            wall, cpu, rss, total, _ = timed([*restic, "backup", str(ssmix2)], env)
            at_rest = du(restic_root / "repo")
            return Run(what, wall, cpu, rss, total, at_rest - before, at_rest)

        runs: list[Run] = []
        print(f"tree: {files:,} files; baseline …", flush=True)
        runs.append(hakobune(ROOT / "agent", HOSPITAL, "hakobune baseline"))
        runs.append(hakobune(ROOT / "agent-walk", "BENCH02", "hakobune baseline (2nd agent)"))
        runs.append(restic_run("restic baseline"))
        print("one synthetic day (synth --advance 1) …", flush=True)
        stats = advance(hospital, 1)
        print(f"  {stats.files_written:,} files written, {stats.files_renamed:,} renamed", flush=True)
        drop_caches()
        runs.append(hakobune(ROOT / "agent", HOSPITAL, "hakobune daily (journal)"))
        runs.append(hakobune(ROOT / "agent-walk", "BENCH02", "hakobune daily (walk)"))
        runs.append(restic_run("restic daily"))
    finally:
        sshd.terminate()
        sshd.wait()
        subprocess.run(["userdel", RESTIC_USER], capture_output=True, check=False)
        for hid in (HOSPITAL, "BENCH02"):
            subprocess.run(["userdel", f"hkb-{hid.lower()}"], capture_output=True, check=False)
        if not args.keep:
            shutil.rmtree(ROOT, ignore_errors=True)

    load = " ".join(f"{x:.2f}" for x in os.getloadavg())
    print(f"\nload average at the start {load_start}, at the end {load}")
    print("peak RSS: GNU time's maximum resident set size of the largest process (for hakobune, the")
    print("'hakobune agent sync' process or one of its reader processes); tree: the sampled sum of the")
    print("command's processes (GNU time included, the benchmark itself not).")
    print(
        f"\n{'run':32} {'wall s':>8} {'cpu s':>8} {'peak RSS':>10} {'RSS tree':>10} {'sent':>11} "
        f"{'at rest':>11}"
    )
    for r in runs:
        print(
            f"{r.what:32} {r.wall:8.2f} {r.cpu:8.2f} {mb(r.rss_single):>10} {mb(r.rss_total):>10} "
            f"{mb(r.sent):>11} {mb(r.at_rest):>11}"
        )
    by = {r.what: r for r in runs}
    theirs = by["restic daily"]
    for name in ("hakobune daily (journal)", "hakobune daily (walk)"):
        day = by[name]
        verdict = "meets" if theirs.wall / day.wall >= 7 and day.rss_single < TARGET_RSS else "misses"
        print(
            f"{name}: {theirs.wall / day.wall:.1f}× faster than restic's daily; peak RSS "
            f"{mb(day.rss_single)} (restic {mb(theirs.rss_single)}); {verdict} the target "
            f"(≥ 7×, < {mb(TARGET_RSS)})"
        )


if __name__ == "__main__":
    main()
