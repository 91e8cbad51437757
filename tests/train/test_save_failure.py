"""The one-line report of a failed checkpoint save: its cause, from the errors orbax raises."""
import errno
import os

from mmfm.train.save_failure import CheckpointSaveError, failure_cause

# What orbax 0.12.8 raised for a save into a full tmpfs (tensorstore's error, as ValueError text).
TENSORSTORE_ENOSPC = (
    'RESOURCE_EXHAUSTED: Error writing local file "/w/checkpoints/15.orbax-checkpoint-tmp/state.'
    'orbax-checkpoint-tmp/_sharding": Failed to write 79437 bytes to file 9: No space left on '
    "device [os_error_code='28']")


def _chained(outer: Exception, inner: Exception) -> Exception:
    try:
        try:
            raise inner
        except Exception as e:
            raise outer from e
    except Exception as e:
        return e


def test_cause_from_an_oserror_anywhere_in_the_chain():
    exc = _chained(RuntimeError("save failed"), PermissionError(errno.EACCES, "denied", "/w"))
    assert failure_cause(exc) == f"{os.strerror(errno.EACCES)} (errno EACCES)"


def test_cause_from_tensorstore_error_text():
    exc = _chained(RuntimeError("finalize failed"), ValueError(TENSORSTORE_ENOSPC))
    assert failure_cause(exc) == "No space left on device (errno ENOSPC)"
    assert failure_cause(ValueError("[Errno 122] quota")) == \
        f"{os.strerror(errno.EDQUOT)} (errno EDQUOT)"


def test_cause_without_an_os_error_is_the_innermost_first_line():
    exc = _chained(RuntimeError("outer"), ValueError("inner\nmore"))
    assert failure_cause(exc) == "ValueError: inner"


def test_message_is_one_line_naming_step_path_cause_and_last_good():
    e = CheckpointSaveError(35, "/w/checkpoints/35", "No space left on device (errno ENOSPC)",
                            "step 30 (/w/checkpoints/30)")
    assert "\n" not in str(e)
    assert str(e).startswith("mmfm: saving the checkpoint of step 35 to /w/checkpoints/35 failed: "
                             "No space left on device (errno ENOSPC); the last good checkpoint is "
                             "step 30 (/w/checkpoints/30)")
    first = CheckpointSaveError(5, "/w/checkpoints/5", "x", None)
    assert "no earlier checkpoint" in str(first)


def test_a_writer_thread_failing_on_a_full_disk_logs_one_line(caplog):
    import threading
    from mmfm.train.save_failure import QuietSaveFailure

    def write():
        raise OSError(errno.ENOSPC, "No space left on device")

    before = threading.excepthook
    quiet = QuietSaveFailure()
    try:
        with caplog.at_level("WARNING", logger="mmfm"):
            t = threading.Thread(target=write, name="tb-writer")
            t.start()
            t.join()
    finally:
        quiet.remove()
    assert [r.getMessage() for r in caplog.records] == \
        ["tb-writer could not write: No space left on device (errno ENOSPC)"]
    assert threading.excepthook is before  # removed again
