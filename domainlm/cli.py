"""The ``domainlm`` command line: one typed function per verb, flags built from its dataclass.

Verb modules are imported only when their verb runs, so ``domainlm --help``, ``validate`` and
``models`` answer without importing torch or transformers.
"""

from __future__ import annotations

import argparse
import dataclasses
import importlib
import logging
import os
import sys
import typing
from dataclasses import dataclass
from typing import Any

from domainlm.config import _strip_optional, fields_of, load, resolved_hints, type_name
from domainlm.errors import ConfigError, DomainLMError, did_you_mean

VERBOSE_HELP = ("show debug logs and third-party loading reports (transformers' UNEXPECTED/MISSING weights table); "
                "also accepted before the verb: domainlm --verbose VERB")


@dataclass(frozen=True)
class Verb:
    name: str  # e.g. "corpus prepare"
    target: str  # "module:function": the verb folder's typed function, which takes the config dataclass
    config: str | None  # "module:Class" or None for verbs without options
    summary: str
    positional: tuple[str, ...] = ()  # config fields taken as positional arguments
    recipe: bool = False  # first positional is an optional YAML recipe whose keys are config fields
    export: str | None = ""  # its name in `from domainlm import ...`: "" the function's own, None CLI only

    @property
    def python_name(self) -> str | None:
        return self.target.partition(":")[2] if self.export == "" else self.export


# The one verb table: the CLI reads it here, and `domainlm/__init__.py` exports every verb from it.
VERBS: tuple[Verb, ...] = (
    Verb("models", "domainlm.models:models", "domainlm.models.config:ModelsConfig",
         "list the model sources that resolve on this machine"),
    Verb("validate", "domainlm.validate:validate", "domainlm.validate.config:ValidateConfig",
         "check a recipe or task file and report every problem at once", positional=("path",)),
    Verb("corpus prepare", "domainlm.corpora:prepare", "domainlm.corpora.config:PrepareConfig",
         "read, clean, deduplicate, split, tokenise and pack a domain corpus", recipe=True),
    Verb("corpus stats", "domainlm.corpora:stats", "domainlm.corpora.config:StatsConfig",
         "documents, tokens, length histogram, frequent terms, tokenizer fragmentation", positional=("corpus",)),
    Verb("corpus download", "domainlm.corpora:download", "domainlm.corpora.config:DownloadConfig",
         "download PubMed baseline/update files or UniProt Swiss-Prot with md5 checks and resume",
         positional=("source",)),
    Verb("adapt", "domainlm.adapt:adapt", "domainlm.adapt.config:AdaptConfig",
         "continue pretraining a base model on a prepared domain corpus", recipe=True),
    Verb("bench", "domainlm.bench:bench", "domainlm.bench.config:BenchConfig",
         "evaluate a model (and its base) on a domain task suite"),
    Verb("bench download", "domainlm.bench:download", "domainlm.bench.config:BenchDownloadConfig",
         "fetch a real suite's data (blurb, matsci, protein-fitness) into the cache, sha256-checked",
         positional=("suite",), export=None),
    Verb("publish", "domainlm.publish:publish", "domainlm.publish.config:PublishConfig",
         "export a run as a checkpoint plain transformers loads, with a model card", positional=("run_dir",)),
    Verb("generate", "domainlm.generate:generate", "domainlm.generate.config:GenerateConfig",
         "generate text from a causal model, token by token"),
    Verb("merge", "domainlm.merge:merge", "domainlm.merge.config:MergeConfig",
         "merge an adapted model back into its base (linear, SLERP, TIES, DARE); --select picks the weight on dev",
         positional=("model",)),
    Verb("vocab extend", "domainlm.vocab:extend", "domainlm.vocab.config:ExtendConfig",
         "add frequent domain words to a base tokenizer and initialise their embeddings", export="extend_vocab"),
    Verb("compute", "domainlm.compute:compute", "domainlm.compute.config:ComputeConfig",
         "FLOPs, wall time and Chinchilla-optimal tokens for a training budget"),
    Verb("scaling sweep", "domainlm.scaling:sweep", "domainlm.scaling.config:SweepConfig",
         "train a grid of tiny models and record held-out loss"),
    Verb("scaling fit", "domainlm.scaling:fit", "domainlm.scaling.config:FitConfig",
         "fit scaling laws to a sweep table", positional=("table",)),
    Verb("quickstart", "domainlm.quickstart:quickstart", "domainlm.quickstart:QuickstartConfig",
         "the whole job end to end on a shipped sample"),
)


def _load(ref: str) -> Any:
    module, _, attr = ref.partition(":")
    return getattr(importlib.import_module(module), attr)


def _flag(name: str) -> str:
    return "--" + name.replace("_", "-")


def build_parser(verb: Verb) -> tuple[argparse.ArgumentParser, type | None]:
    fn = _load(verb.target)
    cls = _load(verb.config) if verb.config else None
    parser = argparse.ArgumentParser(prog=f"domainlm {verb.name}", description=(fn.__doc__ or verb.summary).strip(),
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    if verb.recipe:
        parser.add_argument("recipe", nargs="?", default=None,
                            help="YAML recipe (path or shipped name) whose keys are the options below")
    parser.add_argument("--verbose", "-v", dest="_verbose", action="store_true", default=False, help=VERBOSE_HELP)
    if cls is None:
        return parser, None
    hints = resolved_hints(cls)
    for name, f in fields_of(cls).items():
        default = f.default if f.default is not dataclasses.MISSING else (
            f.default_factory() if f.default_factory is not dataclasses.MISSING else None)  # type: ignore[misc]
        tp, _ = _strip_optional(hints[name])
        help_text = f.metadata.get("help", "")
        # argparse %-formats help strings: a literal '%' ("15% masked") must be doubled.
        help_text = f"{help_text} [{type_name(hints[name])}; default: {default!r}]".replace("%", "%%")
        if name in verb.positional:
            required = f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING  # type: ignore[misc]
            parser.add_argument(name, nargs=None if required else "?", default=argparse.SUPPRESS, help=help_text)
            continue
        if tp is bool:
            parser.add_argument(_flag(name), dest=name, action=argparse.BooleanOptionalAction, default=argparse.SUPPRESS,
                                help=help_text)
        elif typing.get_origin(tp) in (list, tuple):
            # argparse's list convention: `--inputs a b c` (also what an unquoted shell glob expands to), the
            # flag repeated, and commas inside a word (see _split_lists) all add items; none replaces another.
            parser.add_argument(_flag(name), dest=name, nargs="+", action="extend", default=argparse.SUPPRESS,
                                help=help_text, metavar=name.upper())
        else:
            choices = typing.get_args(tp) if typing.get_origin(tp) is typing.Literal else None
            parser.add_argument(_flag(name), dest=name, default=argparse.SUPPRESS, choices=choices, help=help_text,
                                metavar=name.upper() if choices is None else None)
    return parser, cls


def _split_lists(cls: type, ns: dict[str, Any]) -> None:
    """Split each word of a list flag at its field's ``sep`` (``--tasks ner,qa``); ``sep=None`` keeps words whole
    (``--override ner.labels=A,B,C`` is one item, whose value the task parses)."""
    for name, f in fields_of(cls).items():
        sep = f.metadata.get("sep", ",")
        if isinstance(ns.get(name), list) and sep:
            ns[name] = [part for word in ns[name] for part in word.split(sep) if part != ""]


def parse_config(verb: Verb, argv: list[str]) -> Any:
    """The verb's config dataclass built from ``argv`` (recipe, then flags), or None for verbs without options."""
    parser, cls = build_parser(verb)
    ns = vars(parser.parse_args(argv))
    if ns.pop("_verbose"):
        set_verbose()
    recipe = ns.pop("recipe", None) if verb.recipe else None
    if recipe is not None and verb.name == "corpus prepare" and "card" not in ns:
        from domainlm.corpora.cards import is_card  # function-local: `domainlm --help` stays free of corpora

        if is_card(recipe):  # `domainlm corpus prepare pubmed-sample ...` names a corpus card
            ns["card"], recipe = recipe, None
    if cls is None:
        return None
    _split_lists(cls, ns)
    # Every value here came from the command line as text (lists as lists of words, flags as bools).
    return load(cls, recipe, ns, from_string=set(ns))


def run_verb(verb: Verb, argv: list[str]) -> Any:
    config = parse_config(verb, argv)
    fn = _load(verb.target)
    return fn() if config is None else fn(config)


def verb_named(name: str) -> Verb:
    return next(v for v in VERBS if v.name == name)


def _usage() -> str:
    width = max(len(v.name) for v in VERBS)
    lines = ["usage: domainlm [--verbose] VERB [options]    (domainlm VERB --help for its options)", "",
             "Adapt general language models to a scientific field.", "", "verbs:"]
    lines += [f"  {v.name:<{width}}  {v.summary}" for v in VERBS]
    return "\n".join(lines)


def set_verbose() -> None:
    """``--verbose``: domainlm's debug logs, which also lets transformers' weight-loading report through
    (:func:`domainlm.sources.load.load_model` hides it otherwise, after its own clearer warning)."""
    logging.getLogger("domainlm").setLevel(logging.DEBUG)
    from domainlm.noise import loud_loggers

    loud_loggers()  # and every third-party warning domainlm mutes otherwise


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    logging.basicConfig(level=os.environ.get("DOMAINLM_LOG", "INFO"), format="%(levelname)s %(message)s")
    for name in ("httpx", "urllib3", "filelock", "datasets", "huggingface_hub"):
        logging.getLogger(name).setLevel(logging.WARNING)
    from domainlm.noise import quiet_loggers

    quiet_loggers()
    while argv and argv[0] in ("--verbose", "-v"):
        set_verbose()
        argv = argv[1:]
    if not argv or argv[0] in ("-h", "--help", "help"):
        print(_usage())
        return 0
    if argv[0] == "--version":
        from importlib.metadata import version

        print(version("domainlm"))
        return 0
    verb = None
    for v in sorted(VERBS, key=lambda v: -len(v.name.split())):
        words = v.name.split()
        if argv[: len(words)] == words:
            verb, argv = v, argv[len(words):]
            break
    if verb is None:
        groups = {v.name.split()[0] for v in VERBS}
        if argv[0] in groups:
            subs = [v.name for v in VERBS if v.name.split()[0] == argv[0]]
            print(f"domainlm {argv[0]}: choose one of: {', '.join(subs)}", file=sys.stderr)
        else:
            names = [v.name for v in VERBS]
            print(f"domainlm: unknown verb '{argv[0]}'{did_you_mean(argv[0], names)}\n\n{_usage()}", file=sys.stderr)
        return 2
    try:
        run_verb(verb, argv)
    except ConfigError as exc:
        print(f"domainlm {verb.name}: invalid configuration: {exc}", file=sys.stderr)
        return 2
    except DomainLMError as exc:
        print(f"domainlm {verb.name}: error: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print(f"domainlm {verb.name}: interrupted", file=sys.stderr)
        return 130
    except OSError as exc:
        # A write that no artifact helper wrapped (a log, a plot, a library's own file): still one line.
        import errno

        if exc.errno not in (errno.ENOSPC, errno.EDQUOT):
            raise
        where = f" while writing {exc.filename}" if exc.filename else ""
        print(f"domainlm {verb.name}: error: no space left on the device{where}; free some space and run the "
              "command again (complete checkpoints and outputs written before were left untouched)", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
