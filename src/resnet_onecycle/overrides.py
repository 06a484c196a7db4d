"""What is wrong with a command line's overrides, in the project's words: what Hydra does not say.

Hydra's own errors name a key that is not in the config, or a config group option that does not
exist; this adds the nearest real key, the options there are, and the check of a `+key=` addition
against the signature of the component under it, which Hydra would only find when the job runs.
"""

from __future__ import annotations

import difflib
import inspect
from pathlib import Path

from omegaconf import DictConfig, OmegaConf


def problem(config_dir: Path, config_name: str, overrides: list[str], multirun: bool = False) -> str | None:
    """The first thing wrong with `overrides` to `config_name`, or None. A sweep's overrides are
    checked with their first value."""
    from hydra import compose, initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra
    from hydra.errors import HydraException

    single = first_values(overrides, multirun)
    if isinstance(single, str):
        return single
    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=str(config_dir), version_base="1.3"):
        try:
            cfg = compose(config_name, overrides=single, return_hydra_config=True)
        except HydraException:
            return first_failing(config_name, single)
        found = next(filter(None, (unaccepted_addition(cfg, o.split("=", 1)[0].lstrip("+"))
                                   for o in single if o.startswith("+"))), None)
    GlobalHydra.instance().clear()
    if found is None and cfg.get("resume"):  # Hydra would make the dir it names
        from resnet_onecycle.rundir import resume_problem

        return resume_problem(cfg.resume)
    return found


def first_values(overrides: list[str], multirun: bool = False) -> list[str] | str:
    """Each override with a sweep's first value, or what makes one unreadable and how to type it."""
    from hydra.core.override_parser.overrides_parser import OverridesParser
    from hydra.errors import HydraException

    parser, single = OverridesParser.create(), []
    for before, text in zip([None, *overrides], overrides):
        try:
            (override,) = parser.parse_overrides([text])
        except HydraException as error:
            if "=" not in text:  # perhaps the rest of a value with a space that the shell split
                joined = f"; if it belongs to {before}, quote the whole: {quoted(f'{before} {text}')}" if before else ""
                return f"{str(error).splitlines()[0]}: write key=value, e.g. model.scheduler.max_lr=0.05{joined}."
            return (f"{text}: Hydra reads this value only in quotes (it holds a bracket, an accent or the like): "
                    f"{quoted(text)}.")
        if not override.is_sweep_override():
            single.append(override.input_line)
            continue
        if not multirun:
            return (f"{text}: a comma (or a sweep function) makes a sweep, which needs -m; for one value with a comma "
                    f"in it, quote it: {quoted(text)}.")
        try:
            single.append(f"{override.get_key_element()}={next(iter(override.sweep_string_iterator()))}")
        except (HydraException, StopIteration, TypeError):
            continue  # interval() and other sweeps a sweeper draws from: Hydra checks those
    return single


def quoted(text: str) -> str:
    """`key=value` as it is typed in a shell so that Hydra reads the value whole: 'key="value"'."""
    key, value = text.split("=", 1)
    value = value.replace("\\", "\\\\").replace('"', '\\"').replace("'", "'\\''")
    return f"'{key}=\"{value}\"'"


def first_failing(config_name: str, overrides: list[str]) -> str:
    """Which override makes composition fail, and the fix: the first one that does."""
    from hydra import compose
    from hydra.errors import HydraException, MissingConfigException

    good: list[str] = []
    for override in overrides:
        try:
            compose(config_name, overrides=[*good, override], return_hydra_config=True)
            good.append(override)
        except MissingConfigException as error:
            return missing_option(override, config_name, error)
        except HydraException as error:
            key = override.lstrip("+~").split("=", 1)[0]
            keys = config_keys(compose(config_name, overrides=good, return_hydra_config=True))
            if key not in keys and not override.startswith(("+", "~")):
                near = difflib.get_close_matches(key, keys, n=1, cutoff=0.6)
                hint = f"did you mean {near[0]}?" if near else f"python src/{config_name}.py --cfg job lists the keys."
                return f"{override}: {key} is not a config key; {hint}"
            return f"{override}: {str(error).splitlines()[0]}"
    return "the command line does not compose into a config; HYDRA_FULL_ERROR=1 shows why."


def missing_option(override: str, config_name: str, error: Exception) -> str:
    from hydra.core.global_hydra import GlobalHydra

    group, option = override.lstrip("+~").split("=", 1)
    options = GlobalHydra.instance().config_loader().get_group_options(group)
    if not options:
        return f"{override}: {group} is not a config group of {config_name}.yaml."
    if option not in options:
        return f"{override}: no such option in {group}; choose one of: {', '.join(options)}."
    # the option exists, and something it names does not (a launcher or sweeper plugin not installed)
    return f"{override}: {str(error).splitlines()[0]} (the launchers and sweepers come with pip install -e '.[sweep]')."


def config_keys(cfg: DictConfig, prefix: str = "") -> list[str]:
    keys = []
    for key in cfg.keys():
        path = f"{prefix}{key}"
        keys.append(path)
        node = cfg._get_node(key)
        if isinstance(node, DictConfig):
            keys += config_keys(node, f"{path}.")
    return keys


def unaccepted_addition(cfg: DictConfig, key: str) -> str | None:
    """For `+key=...` under a component (`_target_`): the error when the component takes no such argument."""
    from hydra.utils import get_object

    parts = key.split(".")
    for depth in range(len(parts) - 1, 0, -1):
        node = OmegaConf.select(cfg, ".".join(parts[:depth]))
        if not (isinstance(node, DictConfig) and "_target_" in node):
            continue
        argument = parts[depth]
        try:
            parameters = inspect.signature(get_object(node._target_)).parameters
        except (ImportError, ValueError, TypeError, AttributeError):
            return None
        if argument.startswith("_") or argument in parameters or any(
                p.kind is inspect.Parameter.VAR_KEYWORD for p in parameters.values()):
            return None
        names = [n for n in parameters if n not in ("self", "args", "kwargs")]
        near = difflib.get_close_matches(argument, names, n=1, cutoff=0.6)
        return (f"+{key}: {node._target_} takes no argument {argument!r}"
                + (f"; did you mean {'.'.join(parts[:depth])}.{near[0]}?" if near else f"; it takes: {', '.join(names)}."))
    return None
