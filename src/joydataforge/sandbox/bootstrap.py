"""The first code the sandbox's interpreter runs: it fences the process in, then runs the user's code.

Run as a script by :mod:`joydataforge.sandbox.runner` (``python -s [-S] -B bootstrap.py SPEC``), never imported
by this package: it imports the standard library only. In order, before a line of the user's code runs:

1. read the spec (mode, code file, work folder, result file, limits) and open the result file;
2. with the network off, move into a fresh user + network namespace when the kernel allows it (no interface
   but a down loopback: nothing to connect to, whatever the code does);
3. set resource limits, soft = hard so the code cannot raise them again: address space, data, CPU seconds,
   file size, open files, processes, no core files;
4. install an audit hook (PEP 578) that refuses writes outside the work folder, sockets, name lookups,
   process creation, ctypes and changes of limits;
5. run the code as ``__main__`` (``run``) or load it and call one function with keyword arguments (``call``),
   then write one JSON line to the result file: verdict, reason, value.

The hook records every refusal, so code that catches the ``PermissionError`` still ends ``forbidden``.
"""

import _socket  # the C module: its constants without the cost of importing socket (enum, selectors)
import json
import os
import resource
import signal
import sys
import types

MIB = 1024 * 1024
FILE_SIZE_LIMIT = 64 * MIB  # a file the code writes in its folder; past it writes fail with EFBIG
OPEN_FILES = 64
TASKS_PER_PROCESS = 16  # threads one sandboxed process may start (RLIMIT_NPROC counts threads too)
CLONE_NEWUSER = 0x10000000
CLONE_NEWNET = 0x40000000
PROCESS_EVENTS = frozenset(
    {"os.fork", "os.forkpty", "os.posix_spawn", "os.spawn", "os.exec", "os.system", "subprocess.Popen", "pty.spawn"}
)
LOOKUP_EVENTS = frozenset(
    {
        "socket.getaddrinfo",
        "socket.gethostbyname",
        "socket.gethostbyaddr",
        "socket.getnameinfo",
        "socket.connect",
        "socket.bind",
        "socket.sendto",
        "socket.sendmsg",
    }
)
# (event, indexes of the path arguments a write touches, index of dir_fd or None)
PATH_EVENTS = {
    "os.mkdir": ((0,), 2),
    "os.remove": ((0,), 1),
    "os.rmdir": ((0,), 1),
    "os.rename": ((0, 1), 2),
    "os.link": ((0, 1), 2),
    "os.symlink": ((1,), 2),
    "os.chmod": ((0,), 2),
    "os.chown": ((0,), 3),
    "os.chflags": ((0,), None),
    "os.lchflags": ((0,), None),
    "os.truncate": ((0,), None),
    "os.utime": ((0,), 3),
    "os.setxattr": ((0,), None),
    "os.removexattr": ((0,), None),
    "shutil.rmtree": ((0,), 1),
    "shutil.chown": ((0,), None),
}
WRITE_FLAGS = os.O_WRONLY | os.O_RDWR | os.O_CREAT | os.O_TRUNC | os.O_APPEND
FORBIDDEN_MODULES = frozenset({"ctypes", "_ctypes"})
INTROSPECTION_EVENTS = frozenset({"gc.get_objects", "gc.get_referrers", "gc.get_referents", "sys._current_frames"})
MEMORY_LINE = b'{"verdict": "memory", "reason": "the code ran out of memory (MemoryError)"}\n'


class SandboxViolation(PermissionError):
    """Raised inside the sandbox for an action its limits refuse."""


def enter_network_namespace():
    """A fresh user + network namespace: no route anywhere even for code that escapes the hook. Best effort."""
    try:
        import ctypes

        libc = ctypes.CDLL(None, use_errno=True)
        done = libc.unshare(CLONE_NEWUSER | CLONE_NEWNET) == 0
    except Exception:
        done = False
    # The code must import ctypes itself (and be refused) rather than find it loaded.
    for name in [m for m in sys.modules if m == "ctypes" or m.startswith(("ctypes.", "_ctypes"))]:
        del sys.modules[name]
    return done


def count_user_tasks():
    """Processes + threads of this real user now: RLIMIT_NPROC counts them all, per user."""
    uid = str(os.getuid())
    total = 0
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/status") as status:
                fields = dict(line.split(":", 1) for line in status if ":" in line)
        except OSError:
            continue
        if fields.get("Uid", "").split()[:1] == [uid]:
            total += int(fields.get("Threads", "1").strip() or 1)
    return total


def set_limits(limits):
    memory = int(limits["memory_mb"]) * MIB
    cpu = int(limits["timeout_s"]) + 1
    wanted = [
        (resource.RLIMIT_AS, memory),
        (resource.RLIMIT_DATA, memory),
        (resource.RLIMIT_CPU, cpu),
        (resource.RLIMIT_FSIZE, FILE_SIZE_LIMIT),
        (resource.RLIMIT_NOFILE, OPEN_FILES),
        (resource.RLIMIT_CORE, 0),
    ]
    if os.path.isdir("/proc") and os.getuid() != 0:
        # A second wall behind the hook: the kernel caps this user's tasks (processes and threads, all of the
        # user's, and never root's) a little above what exists now, so threads work and a fork loop that got past
        # the hook stops after a few dozen processes.
        headroom = TASKS_PER_PROCESS * int(limits["max_processes"])
        wanted.append((resource.RLIMIT_NPROC, count_user_tasks() + headroom))
    for which, value in wanted:
        try:
            soft, hard = resource.getrlimit(which)
            if hard != resource.RLIM_INFINITY:
                value = min(value, hard)
            resource.setrlimit(which, (value, value))
        except (ValueError, OSError):
            pass  # a platform without this limit: the other walls stand


def make_hook(work, writable, network, max_processes, violations):
    """The audit hook: a refusal raises :class:`SandboxViolation` and is recorded in ``violations``."""
    work = os.path.realpath(work)
    spawned = [0]

    def refuse(message):
        if len(violations) < 20:
            violations.append(message)
        raise SandboxViolation("sandbox: " + message)

    def resolve(path, dir_fd=None):
        if isinstance(path, int):
            return None  # an open descriptor: nothing new is reached by name
        path = os.fsdecode(os.fspath(path))
        if not os.path.isabs(path):
            base = os.getcwd()
            if dir_fd is not None:
                try:
                    base = os.readlink(f"/proc/self/fd/{dir_fd}")
                except OSError:
                    return "<unknown folder>/" + path
            path = os.path.join(base, path)
        return os.path.realpath(path)

    def inside(path):
        return path is None or (writable and (path == work or path.startswith(work + os.sep))) or path == os.devnull

    def hook(event, args):
        if event == "open":
            path, mode, flags = args
            writes = (isinstance(mode, str) and any(c in mode for c in "wax+")) or (
                isinstance(flags, int) and flags & WRITE_FLAGS
            )
            if writes:
                target = resolve(path)
                if not inside(target):
                    refuse(f"writing {target} is not allowed (only the run's own folder is writable)")
        elif event in PATH_EVENTS:
            indexes, dir_fd_at = PATH_EVENTS[event]
            dir_fd = args[dir_fd_at] if dir_fd_at is not None and dir_fd_at < len(args) else None
            if not isinstance(dir_fd, int) or dir_fd < 0:  # CPython passes -1 for "no dir_fd"
                dir_fd = None
            for index in indexes:
                target = resolve(args[index], dir_fd)
                if not inside(target):
                    refuse(f"{event} on {target} is not allowed (only the run's own folder is writable)")
        elif event in PROCESS_EVENTS:
            if spawned[0] + 1 >= max_processes:
                refuse(f"starting a process ({event}) is not allowed")
            spawned[0] += 1
        elif event in ("os.kill", "os.killpg"):
            if event == "os.killpg" or args[0] not in (0, os.getpid()):
                refuse(f"signalling another process ({event}) is not allowed")
        elif event == "socket.__new__":
            if not network and args[1] != getattr(_socket, "AF_UNIX", None):
                refuse("opening a network socket is not allowed")
        elif event in LOOKUP_EVENTS:
            if not network:
                refuse(f"network access ({event}) is not allowed")
        elif event == "import":
            if args[0] in FORBIDDEN_MODULES:
                refuse(f"importing {args[0]} is not allowed")
        elif event.startswith("ctypes."):
            refuse(f"{event} is not allowed")
        elif event in ("resource.setrlimit", "resource.prlimit"):
            refuse("changing resource limits is not allowed")
        elif event in INTROSPECTION_EVENTS:
            refuse(f"{event} is not allowed")

    return hook


def user_traceback(exc, bootstrap_file):
    """The traceback without the bootstrap's own frames (running the code, the hook refusing): noise to a reader."""
    import traceback

    shown = traceback.TracebackException(type(exc), exc, exc.__traceback__)
    shown.stack = traceback.StackSummary.from_list([f for f in shown.stack if f.filename != bootstrap_file])
    return "".join(shown.format())


def one_line(exc):
    text = f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__
    text = " ".join(text.split())
    return text if len(text) <= 300 else text[:297] + "..."


def run_user_code(spec, code):
    """Run the code (and call the function): an outcome dict with verdict, reason, value and exit_code."""
    module = types.ModuleType("__main__" if spec["mode"] == "run" else "sandbox_tool")
    module.__file__ = spec["code_path"]
    sys.modules[module.__name__] = module
    bootstrap_file = os.path.abspath(__file__)
    try:
        exec(compile(code, spec["code_path"], "exec"), module.__dict__)
        if spec["mode"] == "run":
            return {"verdict": "ok", "reason": "", "exit_code": 0}
        function = module.__dict__.get(spec["function"])
        if not callable(function):
            raise LookupError(f"no function named {spec['function']!r} in the tool code")
        value = function(**spec["kwargs"])
        if isinstance(value, types.CoroutineType):
            import asyncio

            value = asyncio.run(value)
        return {"verdict": "ok", "reason": "", "exit_code": 0, "value": value}
    except MemoryError:
        return {"verdict": "memory", "exit_code": 1}
    except SystemExit as exc:
        status = exc.code
        if status is None or isinstance(status, int):
            exit_code = status or 0
        else:
            print(status, file=sys.stderr)
            exit_code = 1
        if spec["mode"] == "call":
            return {
                "verdict": "error",
                "reason": f"the function called sys.exit({status!r})",
                "exit_code": exit_code or 1,
            }
        if exit_code:
            return {"verdict": "error", "reason": f"the code exited with status {exit_code}", "exit_code": exit_code}
        return {"verdict": "ok", "reason": "", "exit_code": 0}
    except BaseException as exc:  # every failure of the user's code is a verdict, never our crash
        try:
            sys.stderr.write(user_traceback(exc, bootstrap_file))
        except Exception:
            pass
        return {"verdict": "error", "reason": one_line(exc), "exit_code": 1}


def main():
    spec_path = sys.argv[1]
    with open(spec_path, encoding="utf-8") as handle:
        spec = json.load(handle)
    with open(spec["code_path"], encoding="utf-8") as handle:
        code = handle.read()
    limits = spec["limits"]
    result = open(spec["result_path"], "wb", buffering=0)  # opened before the hook: only the bootstrap writes it
    for stream in (sys.stdout, sys.stderr):
        stream.reconfigure(encoding="utf-8", errors="backslashreplace")
    signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # a too-large file fails its write instead of killing us
    set_limits(limits)  # before the namespace: RLIMIT_NPROC counts this user's tasks as /proc shows them now
    netns = False if limits["network"] else enter_network_namespace()
    os.chdir(spec["work"])
    sys.argv = [spec["code_path"]]
    violations = []
    sys.addaudithook(
        make_hook(spec["work"], limits["writable_dir"], limits["network"], int(limits["max_processes"]), violations)
    )
    outcome = run_user_code(spec, code)
    exit_code = outcome.pop("exit_code")
    if outcome["verdict"] != "memory":
        if violations:
            outcome.update(verdict="forbidden", reason=violations[0])
            outcome.pop("value", None)
            exit_code = exit_code or 1
        outcome["netns"] = netns
        try:
            encoded = json.dumps(outcome, ensure_ascii=False, allow_nan=False).encode("utf-8") + b"\n"
        except (TypeError, ValueError) as exc:
            outcome.pop("value", None)
            outcome.update(verdict="error", reason=f"the function returned a value that is not JSON ({exc})")
            encoded = json.dumps(outcome, ensure_ascii=False).encode("utf-8") + b"\n"
            exit_code = exit_code or 1
        except MemoryError:
            encoded = MEMORY_LINE
    else:
        encoded = MEMORY_LINE
    try:
        result.write(encoded)
    except OSError as exc:  # EFBIG: the value is larger than a file may be
        result.write(json.dumps({"verdict": "output_limit", "reason": f"the returned value: {exc}"}).encode())
    try:
        sys.stdout.flush()
        sys.stderr.flush()
    except Exception:
        pass
    os._exit(exit_code)


if __name__ == "__main__":
    if sys.path and os.path.abspath(sys.path[0]) == os.path.dirname(os.path.abspath(__file__)):
        del sys.path[0]  # the package folder is not the user's import path
    main()
