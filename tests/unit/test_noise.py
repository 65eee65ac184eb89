"""Known-harmless library messages stay out of what the user reads; tracebacks fold into a sentence."""
import logging
import warnings

from backend.core.noise import quiet_known_noise, readable_log


def test_the_bitsandbytes_kernel_warning_and_future_warnings_are_filtered_at_the_source(caplog):
    with warnings.catch_warnings():  # the process-wide filter must not outlive this test
        _check_filters(caplog)
    quiet_known_noise.__globals__["_INSTALLED"] = False


def _check_filters(caplog):
    quiet_known_noise()
    log = logging.getLogger("bitsandbytes.backends.cpu.ops")
    with caplog.at_level(logging.WARNING):
        log.warning("Failed to load CPU gemm_4bit_forward from kernels-community: %s. Please ...", "boom")
        log.warning("A real problem.")
    assert [r.getMessage() for r in caplog.records] == ["A real problem."]
    with warnings.catch_warnings(record=True) as seen:
        warnings.simplefilter("always")
        quiet_known_noise.__globals__["_INSTALLED"] = False  # catch_warnings reset the filters; install again
        quiet_known_noise()
        warnings.warn("`x` is deprecated", FutureWarning)
        warnings.warn("keep me", UserWarning)
    assert [str(w.message) for w in seen] == ["keep me"]


def test_the_log_box_drops_noise_and_folds_a_traceback_into_a_sentence():
    text = "\n".join([
        "[ftstudio] loading the model",
        "Failed to load CPU gemm_4bit_forward from kernels-community: no module. Please make sure",
        "/x/modeling_utils.py:3312: FutureWarning: `is_gradient_checkpointing` is deprecated",
        "  warnings.warn(",
        "Traceback (most recent call last):",
        '  File "/x/run.py", line 3, in main',
        "    train()",
        "KeyboardInterrupt",
        "[ftstudio] stopped at step 9",
    ])
    shown = readable_log(text).splitlines()
    assert shown[0] == "[ftstudio] loading the model"
    assert shown[1].startswith("[details: a traceback of 4 lines ending in 'KeyboardInterrupt'")
    assert shown[2] == "[ftstudio] stopped at step 9" and len(shown) == 3
