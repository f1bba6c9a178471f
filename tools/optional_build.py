"""Optional extension modules: a failed build warns and leaves the rest of the package working.

setup.py builds ternary_ops._C (schemas, CPU kernels, CUDA) as a required module and the
Objective-C++ MPS glue (ternary_ops._C_mps) as an optional one. setuptools' own
``Extension(optional=True)`` handles only distutils' compiler errors; torch's ninja build
raises RuntimeError, and a module left from an earlier, successful build would be imported as
if it were current. build_optional() covers both: any exception of the build becomes a warning
on stderr, and stale outputs are removed so that `import` finds no module at all.
"""
import os
import sys
import textwrap

RULE = "=" * 78


def warning_text(name: str, error: BaseException, what: str, consequence: str) -> str:
    """The warning printed when optional extension `name` failed to build."""
    message = str(error).strip() or "(no message)"
    if len(message) > 1500:
        message = "..." + message[-1500:]
    def wrap(text):
        return textwrap.wrap(text, 78, break_long_words=False, break_on_hyphens=False)

    lines = [RULE] + wrap(f"WARNING: the optional extension {name} ({what}) failed to build; "
                          "the package was built without it.") + wrap(consequence) + wrap(
        "The compiler's messages are printed above this warning. pip hides the output of a "
        "build that succeeds: to see them, rebuild with") + [
        "    pip install -v --no-build-isolation <the same arguments>",
        f"The error: {type(error).__name__}:"] + [
        "    " + line for line in message.splitlines()[-12:]] + [RULE]
    return "\n".join(lines) + "\n"


def build_optional(build, ext, outputs, what: str, consequence: str, stream=None) -> bool:
    """Runs ``build(ext)``; True when it succeeded.

    On any exception (compile, link, ninja, an unknown source type, ...) removes every path in
    `outputs` that exists (the module from an earlier build, here and where --inplace copies it),
    prints warning_text() to `stream` (default stderr) and returns False.
    KeyboardInterrupt and SystemExit pass through.
    """
    try:
        build(ext)
        return True
    except Exception as error:  # noqa: BLE001 (optional: nothing may fail the build)
        for path in outputs:
            if path and os.path.lexists(path):
                os.remove(path)
        stream = stream or sys.stderr
        stream.write("\n" + warning_text(ext.name, error, what, consequence))
        stream.flush()
        return False
