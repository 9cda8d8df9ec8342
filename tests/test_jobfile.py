"""The job-file reader and the mount check, in process, through the core's own API."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from runmaker import JobFile, RunmakerError, check_file_locking


def jobs(jobfile: JobFile) -> list[tuple[int, bytes]]:
    """(line number, command) of every indexed job."""
    return [(jobfile.lines[i], jobfile.command(i)) for i in range(len(jobfile.offsets))]


def all_states(jobfile: JobFile) -> bytes:
    data, base, _ = jobfile.read(whole=True)
    assert base == 0
    return jobfile.states_of(data)


def append(path: Path, data: bytes) -> None:
    with open(path, "ab") as f:
        f.write(data)


@pytest.mark.timeout(10)
def test_comments_blank_lines_and_jobs_with_every_line_counted(tmp_path, opened):
    path = tmp_path / "runs.txt"
    path.write_bytes(
        b"# a comment\n"  # 1
        b". echo one\n"  # 2
        b"\n"  # 3
        b"/ also a comment\n"  # 4
        b"   \t \n"  # 5: blank
        b"+ echo two\n"  # 6
        b"#. not a job\n"  # 7
        b"/. not a job either\n"  # 8
        b"d echo three\n"  # 9
        b"x echo unknown state\n"  # 10
    )
    jobfile = opened(path)
    jobfile.read()
    assert jobs(jobfile) == [
        (2, b"echo one"),
        (6, b"echo two"),
        (9, b"echo three"),
        (10, b"echo unknown state"),
    ]
    assert all_states(jobfile) == b".+dx"
    assert jobfile.line_count == 10
    assert opened.warnings == []
    assert jobfile.index_of_line(6) == 1
    assert jobfile.index_of_line(7) is None


@pytest.mark.timeout(10)
def test_directives_are_recognised_and_unknown_ones_warned(tmp_path, opened):
    path = tmp_path / "runs.txt"
    path.write_bytes(
        b". a\n"  # 1
        b"#runmaker max-running 3\n"  # 2
        b"#runmaker barrier\n"  # 3
        b". b\n"  # 4
        b"#runmaker bogus\n"  # 5
        b"#runmakerish max-running 9\n"  # 6: a plain comment
        b"#runmaker max-running lots\n"  # 7
    )
    jobfile = opened(path)
    jobfile.read()
    assert jobfile.max_running == 3
    assert jobfile.barriers == [1]  # the first job below it is job index 1
    assert jobfile.barrier_lines == [3]
    assert jobs(jobfile) == [(1, b"a"), (4, b"b")]
    assert len(opened.warnings) == 2
    assert opened.warnings[0].startswith(f"Warning: {path}:5: ")
    assert opened.warnings[1].startswith(f"Warning: {path}:7: ")

    append(path, b"#runmaker max-running none\n")
    jobfile.read()
    assert jobfile.max_running is None  # the last one in the file wins


@pytest.mark.timeout(10)
def test_a_mistaken_job_line_is_warned_once_with_file_and_line(tmp_path, opened):
    path = tmp_path / "runs.txt"
    path.write_bytes(b". good\n.cmd\n. also good\n")
    jobfile = opened(path)
    jobfile.read()
    assert jobs(jobfile) == [(1, b"good"), (3, b"also good")]
    assert len(opened.warnings) == 1
    assert opened.warnings[0].startswith(f"Warning: {path}:2: ")
    assert "\n" not in opened.warnings[0]
    # Reading again (a worker rescans) does not warn again.
    all_states(jobfile)
    all_states(jobfile)
    jobfile.read()
    assert len(opened.warnings) == 1


@pytest.mark.timeout(10)
def test_lines_shorter_than_three_bytes_are_not_jobs(tmp_path, opened):
    path = tmp_path / "runs.txt"
    path.write_bytes(b". \n.\n\n. x\nd\t\n.  \n")
    jobfile = opened(path)
    jobfile.read()
    # ".  " has three bytes but no command: no job either.
    assert jobs(jobfile) == [(4, b"x")]


@pytest.mark.timeout(10)
def test_tab_separator_crlf_and_trailing_blanks(tmp_path, opened):
    path = tmp_path / "runs.txt"
    path.write_bytes(b".\techo tab\n. echo crlf\r\n. echo blanks \t \r\n.\t\techo  inner  space\n")
    jobfile = opened(path)
    jobfile.read()
    assert jobs(jobfile) == [
        (1, b"echo tab"),
        (2, b"echo crlf"),
        (3, b"echo blanks"),
        (4, b"\techo  inner  space"),  # only the one separator is not the command
    ]
    assert all_states(jobfile) == b"...."


@pytest.mark.timeout(10)
def test_last_line_without_newline_is_a_job(tmp_path, opened):
    path = tmp_path / "runs.txt"
    path.write_bytes(b". one\n. two\r")
    jobfile = opened(path)
    jobfile.read()
    assert jobs(jobfile) == [(1, b"one"), (2, b"two")]
    assert jobfile.line_count == 2


@pytest.mark.timeout(10)
def test_an_unterminated_last_line_that_grows_is_indexed_again(tmp_path, opened):
    path = tmp_path / "runs.txt"
    path.write_bytes(b". one\n. tw")
    jobfile = opened(path)
    jobfile.read()
    assert jobs(jobfile) == [(1, b"one"), (2, b"tw")]

    append(path, b"o \n. three")
    _, _, first_new = jobfile.read()
    assert first_new == 1
    assert jobs(jobfile) == [(1, b"one"), (2, b"two"), (3, b"three")]

    append(path, b"\n# done\n")
    jobfile.read()
    assert jobs(jobfile) == [(1, b"one"), (2, b"two"), (3, b"three")]
    assert jobfile.line_count == 4
    assert all_states(jobfile) == b"..."


@pytest.mark.timeout(10)
def test_an_unterminated_directive_that_grows_is_read_again(tmp_path, opened):
    path = tmp_path / "runs.txt"
    path.write_bytes(b". one\n#runmaker max-running 2")
    jobfile = opened(path)
    jobfile.read()
    assert jobfile.max_running == 2
    append(path, b"5\n#runmaker barrier")
    jobfile.read()
    assert jobfile.max_running == 25
    # SPEC 1: a last line that appeared after the first read may be a
    # writer's first half: not obeyed until its newline arrives.
    assert jobfile.barrier_lines == []
    append(path, b"\n. two\n")
    jobfile.read()
    assert jobfile.barrier_lines == [3]  # not counted twice
    assert jobfile.barriers == [1]
    assert jobs(jobfile) == [(1, b"one"), (4, b"two")]
    assert opened.warnings == []


@pytest.mark.timeout(10)
def test_an_unterminated_short_line_becomes_a_job_when_it_grows(tmp_path, opened):
    path = tmp_path / "runs.txt"
    path.write_bytes(b". one\n.")
    jobfile = opened(path)
    jobfile.read()
    assert jobs(jobfile) == [(1, b"one")]
    append(path, b" two\n")
    jobfile.read()
    assert jobs(jobfile) == [(1, b"one"), (2, b"two")]


@pytest.mark.timeout(10)
def test_appended_lines_are_indexed_incrementally(tmp_path, opened):
    path = tmp_path / "runs.txt"
    path.write_bytes(b". one\n# c\n")
    jobfile = opened(path)
    data, base, first_new = jobfile.read()
    assert (base, first_new) == (0, 0)
    size = path.stat().st_size

    append(path, b". two\n\n+ three\n")
    data, base, first_new = jobfile.read()
    assert base == size  # only the new bytes were read
    assert data == b". two\n\n+ three\n"
    assert first_new == 1
    assert jobfile.states_of(data, base, first_new) == b".+"
    assert jobs(jobfile) == [(1, b"one"), (3, b"two"), (5, b"three")]

    data, base, first_new = jobfile.read()  # nothing new
    assert (data, first_new) == (b"", 3)
    assert jobs(jobfile) == [(1, b"one"), (3, b"two"), (5, b"three")]

    append(path, b". four\n")
    assert all_states(jobfile) == b"..+."  # a whole read indexes the new line once
    assert jobs(jobfile) == [(1, b"one"), (3, b"two"), (5, b"three"), (6, b"four")]


@pytest.mark.timeout(10)
def test_non_utf8_commands_are_kept_as_bytes(tmp_path, opened):
    path = tmp_path / "runs.txt"
    path.write_bytes(b". echo \xff\xfe caf\xc3\xa9\n")
    jobfile = opened(path)
    jobfile.read()
    assert jobs(jobfile) == [(1, b"echo \xff\xfe caf\xc3\xa9")]
    assert opened.warnings == []


@pytest.mark.timeout(10)
def test_a_missing_file_or_a_directory_is_an_error_naming_it(tmp_path):
    with pytest.raises(RunmakerError, match="no such file") as info:
        JobFile(str(tmp_path / "nothing.txt"))
    assert info.value.exit_code == 2
    with pytest.raises(RunmakerError, match="directory"):
        JobFile(str(tmp_path))


# --------------------------------------------------------------------------
# check_file_locking with a made-up /proc/self/mountinfo
# --------------------------------------------------------------------------


def mount_line(path: Path, fstype: str, super_options: str, mount_options: str = "rw,relatime") -> str:
    st = os.stat(path)
    device = f"{os.major(st.st_dev)}:{os.minor(st.st_dev)}"
    return (
        f"36 25 {device} / /mnt/shared {mount_options} shared:7 - {fstype} "
        f"server:/export {super_options}\n"
    )


def other_mount(device: str = "0:9999") -> str:
    return f"22 1 {device} / / rw - ext4 /dev/sda1 rw\n"


@pytest.mark.timeout(10)
@pytest.mark.parametrize("fstype", ["nfs", "nfs4"])
@pytest.mark.parametrize(
    "bad, options",
    [
        ("nolock", "rw,vers=3,nolock,proto=tcp,local_lock=all"),
        ("local_lock=posix", "rw,vers=4.2,hard,proto=tcp,local_lock=posix,addr=10.0.0.1"),
        ("local_lock=all", "rw,vers=4.2,hard,proto=tcp,local_lock=all,addr=10.0.0.1"),
    ],
)
def test_nfs_mounts_whose_locks_stay_local_are_refused(tmp_path, fstype, bad, options):
    path = tmp_path / "runs.txt"
    path.write_bytes(b". true\n")
    mountinfo = other_mount() + mount_line(path, fstype, options)
    with pytest.raises(RunmakerError) as info:
        check_file_locking(str(path), mountinfo=mountinfo)
    message = info.value.format_message()
    assert "\n" not in message
    assert str(path) in message
    assert bad in message
    assert info.value.exit_code == 2
    assert path.read_bytes() == b". true\n"


@pytest.mark.timeout(10)
@pytest.mark.parametrize(
    "fstype, options",
    [
        ("nfs4", "rw,vers=4.2,hard,proto=tcp,local_lock=none,addr=10.0.0.1"),
        ("nfs", "rw,vers=3,hard,proto=tcp,local_lock=none,addr=10.0.0.1"),
        ("ext4", "rw,errors=remount-ro"),
        ("tmpfs", "rw,size=100k"),
    ],
)
def test_mounts_with_working_locks_are_accepted(tmp_path, fstype, options):
    path = tmp_path / "runs.txt"
    path.write_bytes(b". true\n")
    check_file_locking(str(path), mountinfo=other_mount() + mount_line(path, fstype, options))


@pytest.mark.timeout(10)
def test_a_nolock_mount_of_another_device_is_not_held_against_this_file(tmp_path):
    path = tmp_path / "runs.txt"
    path.write_bytes(b". true\n")
    elsewhere = "40 25 0:9998 / /mnt/other rw - nfs server:/x rw,vers=3,nolock,local_lock=all\n"
    check_file_locking(str(path), mountinfo=elsewhere + mount_line(path, "ext4", "rw"))


@pytest.mark.timeout(10)
def test_the_real_mountinfo_accepts_the_test_directory(tmp_path):
    path = tmp_path / "runs.txt"
    path.write_bytes(b". true\n")
    check_file_locking(str(path))  # tmp_path is no nolock NFS mount here
    # And the check did look at this file's own mount: the same real table
    # with that mount turned into a nolock NFS mount is refused.
    with open("/proc/self/mountinfo", encoding="utf-8", errors="replace") as f:
        real = f.read().splitlines()
    st = os.stat(path)
    device = f"{os.major(st.st_dev)}:{os.minor(st.st_dev)}"
    doctored = []
    for line in real:
        fields = line.split()
        if fields[2] == device:
            dash = fields.index("-", 6)
            fields[dash + 1], fields[dash + 3] = "nfs", "rw,vers=3,nolock"
            line = " ".join(fields)
        doctored.append(line)
    assert doctored != real, f"no line for device {device} in /proc/self/mountinfo"
    with pytest.raises(RunmakerError, match="'nolock'"):
        check_file_locking(str(path), mountinfo="\n".join(doctored) + "\n")


@pytest.mark.timeout(60)
def test_a_file_larger_than_one_indexing_piece_is_indexed_like_a_small_one(tmp_path):
    """Lines straddling the 1 MiB pieces the indexer splits at keep their numbers."""
    import random

    rng = random.Random(7)
    lines = []
    for i in range(60000):
        kind = rng.random()
        if kind < 0.8:
            lines.append(f"{rng.choice('.+d!e-')} echo {i} {'x' * rng.randrange(0, 60)}".encode())
        elif kind < 0.9:
            lines.append(b"# comment " + b"y" * rng.randrange(0, 80))
        else:
            lines.append(b"")
    data = b"\n".join(lines) + b"\n. last job without newline"
    assert len(data) > 2 * (1 << 20)
    path = tmp_path / "runs.txt"
    path.write_bytes(data)
    jobfile = JobFile(str(path))
    try:
        jobfile.read(whole=True)
        expected = [n for n, line in enumerate(data.split(b"\n"), 1)
                    if len(line) >= 3 and line[1:2] == b" " and line[:1] not in (b"#",)]
        assert list(jobfile.lines) == expected
        offsets = [0]
        for line in data.split(b"\n")[:-1]:
            offsets.append(offsets[-1] + len(line) + 1)
        assert list(jobfile.offsets) == [offsets[n - 1] for n in expected]
        assert jobfile.command(len(expected) - 1) == b"last job without newline"
    finally:
        jobfile.close()
