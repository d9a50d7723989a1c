"""Flags declared with their valid range and the models that read them, checked before any data is read.

Every numeric flag of the command lines names its range where it is defined (``rule``, shown in ``--help`` in
brackets); a flag that not every model reads names its readers (``readers``: a tuple of model kinds, or a test of
the model class). ``problem`` gives the first flag whose value is out of range, or that was given to a model that
does not read it, as one line for ``parser.error``.

    flags = Flags(parser)                         # ncf.py: families.Flags, whose readers are the registry's models
    flags.add(group, "--fold_in_lr", type=float, default=0.05, rule="positive", help="...")
    problem = flags.problem(parser.parse_args())  # None, or "--fold_in_lr must be positive, got -1"
"""

import argparse
import math
from dataclasses import dataclass

# The valid ranges a flag can declare, by how --help and the error name them.
RULES = {"at least 1": lambda value: value >= 1, "at least 2": lambda value: value >= 2,
         "0 or more": lambda value: 0 <= value < math.inf, "positive": lambda value: 0 < value < math.inf,
         "in [0, 1]": lambda value: 0 <= value <= 1, "in [0, 1)": lambda value: 0 <= value < 1,
         "in (0, 1)": lambda value: 0 < value < 1, "in (0, 1]": lambda value: 0 < value <= 1,
         "in [-1, 1)": lambda value: -1 <= value < 1,
         "in [1e-3, 1e3]": lambda value: 1e-3 <= value <= 1e3, "in [1e-3, 1e9]": lambda value: 1e-3 <= value <= 1e9,
         "finite": math.isfinite}


def parsed_by(parse):
    """An argparse ``type`` from ``parse`` (text -> value, a ValueError naming what is wrong): the ValueError's
    words become argparse's one-line error for the flag."""

    def convert(text):
        try:
            return parse(text)
        except ValueError as error:
            raise argparse.ArgumentTypeError(str(error)) from None

    convert.__name__ = parse.__name__  # (argparse names the type in its messages)
    return convert


@dataclass(frozen=True)
class Owned:
    """A flag's name as the user writes it, which models read it (None: every model; else a test of the model
    class, or a tuple of kinds) and its valid range (a key of ``RULES``, or None)."""

    flag: str
    readers: object = None
    rule: str | None = None

    def read_by(self, kind, model_class):
        if self.readers is None:
            return True
        if callable(self.readers):
            return bool(self.readers(model_class(kind)))
        return kind in self.readers


class Flags:
    """A parser's flags with their ranges and readers: ``add`` declares a flag, ``problem`` checks parsed values.
    ``kinds()`` lists the model kinds and ``model_class(kind)`` gives a kind's class (where flags have readers)."""

    def __init__(self, parser, kinds=None, model_class=None):
        self.parser, self.owned, self.kinds, self.model_class = parser, {}, kinds, model_class

    def add(self, group, *names, readers=None, rule=None, **options):
        """``group.add_argument(*names, **options)``, with who reads it and its range (appended to its help)."""
        if rule is not None:
            options["help"] = f"{options.get('help', '')} [{rule}]".strip()
        action = group.add_argument(*names, **options)
        long_names = [name for name in names if name.startswith("--")]
        shown = "/".join(names) if len(names[0]) > 2 or not long_names else long_names[0]
        self.owned[action.dest] = Owned(shown, readers, rule)
        return action

    def problem(self, args):
        """The first problem of ``args`` with the ranges and the readers of the flags, as one line, or None."""
        for name, owned in self.owned.items():
            value = getattr(args, name)
            values = value if isinstance(value, list) else [value]
            wrong = [item for item in values if owned.rule and item is not None and not RULES[owned.rule](item)]
            if wrong:
                shown = format(wrong[0], "g") if isinstance(wrong[0], float) else wrong[0]
                return f"{owned.flag} must be {owned.rule}, got {shown}"
        for name, owned in self.owned.items():
            value = getattr(args, name)
            if owned.readers is None or value in (None, False) or value == self.parser.get_default(name) or \
                    owned.read_by(args.model, self.model_class):
                continue
            readers = [kind for kind in self.kinds() if owned.read_by(kind, self.model_class)]
            return f"{owned.flag} is used by {', '.join(readers)}; --model {args.model} does not read it"
        return None


def given(parser, argv=None):
    """The destinations of the flags the command line ``argv`` (default ``sys.argv[1:]``) gives explicitly, whatever
    their values (a flag given its default value counts): argparse fills a default only where the namespace has
    none, so a namespace of placeholders keeps a placeholder wherever nothing was given."""
    unset = object()
    namespace = argparse.Namespace(**{action.dest: unset for action in parser._actions
                                      if action.dest != argparse.SUPPRESS})
    parsed = parser.parse_args(argv, namespace=namespace)
    return {name for name, value in vars(parsed).items() if value is not unset}
