"""The hostile and careless inputs of ``fedsqueeze bench badinput`` beyond the first table: files that are not
config files, nesting that breaks parsers, numbers that are not finite or absurdly large, strings long enough to
hang a terminal renderer, codec specs that try Python syntax, options that would allocate terabytes, damaged
run folders, contradictory flags, report targets that are folders or inside a run, and the arguments of
``plot``, ``personal``, ``compare``, ``flower`` and ``bench``. Each case names the phrase its one ``error:``
line must contain for the problem and for the fix (see ``fedsqueeze.bench.badinput.Case``).

By class, in this order: ``config_files`` (files that are not config files, nesting), ``values`` (integers,
non-finite numbers, types, names), ``specs`` (long strings, codec specs, options that allocate terabytes),
``run_folders`` (``run`` arguments, damaged runs, ``plot`` and ``personal``) and ``commands`` (``compare``,
``flower``, ``bench``, ``init``); ``writers`` holds what they write into a case's folder.
"""
from __future__ import annotations

from fedsqueeze.bench.badinput import Case
from fedsqueeze.bench.badinput_cases import commands, config_files, run_folders, specs, values

MORE_CASES: list[Case] = [*config_files.CASES, *values.CASES, *specs.CASES, *run_folders.CASES, *commands.CASES]
