"""Command-line parsing shared by ``train_net.py``, ``tools/`` and ``demo/``: ``key=value`` config overrides are
accepted anywhere on the line, also between the values of a multi-value option (``--keep-ratios 0.3 0.5
train.init_checkpoint=W.pth --no-dense``), which a plain argparse ``nargs="+"`` option would swallow."""
import argparse
import errno
import math
import re
import socket
import sys

__all__ = ["add_overrides_argument", "check_tcp_rendezvous", "image_size", "non_negative_float",
           "parse_args_with_overrides", "positive_float", "positive_int", "split_overrides"]

# A config override: a dotted config key (optionally "+key" to add, or "~key", a deletion refused later) followed by
# "=". Paths and URLs with "=" do not match ("/" or ":" before the "="); a bare file name like "a=1.png" does, except
# as the value an option requires (the first value of "--input a=1.png"): write it as "./a=1.png" elsewhere.
_OVERRIDE = re.compile(r"^[+~]?[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z0-9_\-]+)*=")


def positive_int(text):
    """An argparse type: a whole number >= 1 (a count of rounds, threads or pixels, where 0 means nothing)."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be a whole number >= 1, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be >= 1, got {value}")
    return value


def image_size(text, minimum=1):
    """An argparse type: an image size written ``HxW`` (``480x640``) -> ``(height, width)``, each side >= ``minimum``
    pixels (bind it with ``functools.partial`` for another minimum)."""
    try:
        height, width = (int(v) for v in text.lower().split("x"))
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"image size must be HxW, height x width (e.g. 480x640), got {text!r}") from None
    if height < minimum or width < minimum:
        least = "positive" if minimum == 1 else f"at least {minimum}x{minimum}"
        raise argparse.ArgumentTypeError(f"image size must be {least}, got {text!r}")
    return height, width


def _finite_float(text):
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be a number, got {text!r}") from None
    if not math.isfinite(value):  # a limit of nan is never exceeded, a timeout of inf never reached
        raise argparse.ArgumentTypeError(f"must be a finite number, got {text!r}")
    return value


def positive_float(text):
    """An argparse type: a finite number > 0 (seconds between samples, a time limit)."""
    value = _finite_float(text)
    if value <= 0:
        raise argparse.ArgumentTypeError(f"must be > 0, got {text!r}")
    return value


def non_negative_float(text):
    """An argparse type: a finite number >= 0 (a limit, where 0 allows nothing)."""
    value = _finite_float(text)
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be >= 0, got {text!r}")
    return value


def add_overrides_argument(parser):
    """Adds the ``opts`` positional (``KEY=VALUE ...``) that :func:`parse_args_with_overrides` fills."""
    parser.add_argument(
        "opts", nargs="*", default=[], metavar="KEY=VALUE",
        help="config overrides, anywhere on the command line (an unknown key is an error)",
    )


def _option_action(parser, token):
    """The argparse action of the option ``token`` (exact or unambiguous abbreviation), or None."""
    actions = parser._option_string_actions
    if token in actions:
        return actions[token]
    if token.startswith("--"):
        matches = {actions[name] for name in actions if name.startswith(token)}
        if len(matches) == 1:
            return matches.pop()
    return None


def _values_expected(action):
    """How many of the next tokens are values ``action`` cannot do without (0 for flags and variable counts)."""
    if action is None or action.nargs in (0, "?", "*", "+", argparse.REMAINDER):
        return 1 if action is not None and action.nargs == "+" else 0
    return 1 if action.nargs is None else int(action.nargs)


def split_overrides(parser, argv):
    """Splits ``argv`` into (the arguments for ``parser``, the ``key=value`` overrides in their order).

    A token is an override when it looks like ``dotted.key=value`` and is not a value the previous option requires
    (``--output a=b`` keeps ``a=b`` as the output). Everything after ``--`` is left to ``parser``.
    """
    arguments, overrides = [], []
    required_values = 0
    for index, token in enumerate(argv):
        if token == "--":
            arguments.extend(argv[index:])
            break
        if required_values > 0:
            arguments.append(token)
            required_values -= 1
            continue
        if _OVERRIDE.match(token):
            overrides.append(token)
            continue
        arguments.append(token)
        if token.startswith("-") and "=" not in token:
            required_values = _values_expected(_option_action(parser, token))
    return arguments, overrides


def parse_args_with_overrides(parser, argv=None):
    """``parser.parse_args`` with the ``key=value`` overrides taken from anywhere in ``argv`` into ``args.opts``
    (after any the parser collected itself, e.g. detectron2's trailing ``opts``; those are errors unless they are
    overrides)."""
    argv = sys.argv[1:] if argv is None else list(argv)
    arguments, overrides = split_overrides(parser, argv)
    args = parser.parse_args(arguments)
    args.opts = overrides + list(getattr(args, "opts", None) or [])
    return args


def check_tcp_rendezvous(host: str, port: int, listens: bool) -> None:
    """ValueError (one line) when the processes could not meet at ``--dist-url tcp://host:port``: a host name that
    does not resolve (torch's rendezvous retried it without a word until killed), or, on the machine whose first
    process listens there (``listens``), a port already in use (two tracebacks ending in EADDRINUSE). A port freed
    between this check and the launch is not caught here."""
    try:
        socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except socket.gaierror as error:
        raise ValueError(f"--dist-url host {host!r} cannot be resolved ({error.strerror}): give the first machine's "
                         "address") from None
    if not listens:
        return
    # torch's store listens on every interface, IPv6 and IPv4 where it can: probe the same way, IPv4 alone where the
    # machine has no IPv6
    for family, address in ((socket.AF_INET6, "::"), (socket.AF_INET, "")):
        try:
            with socket.socket(family, socket.SOCK_STREAM) as probe:
                if family == socket.AF_INET6:
                    probe.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
                probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as torch's store: a closing port is free
                probe.bind((address, port))
            return
        except OSError as error:
            if error.errno in (errno.EADDRINUSE, errno.EACCES):
                why = "already in use" if error.errno == errno.EADDRINUSE else (error.strerror or str(error))
                raise ValueError(f"--dist-url port {port} cannot be listened on here: {why}; choose another port (or "
                                 "--dist-url auto on one machine)") from None
