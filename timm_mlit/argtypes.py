"""The argparse ``type=`` functions every command of the package shares: an argument is checked when it is parsed,
and a bad one is refused with argparse's usage error (exit status 2) naming the flag, what was expected and the fix.

    p.add_argument('--lr', type=learning_rate)               # finite, > 0 and <= MAX_LR (NaN, inf, 0, 1e38 refused)
    p.add_argument('--epochs', type=positive_int)            # 1, 2, ...
    p.add_argument('--drop', type=drop_rate)                 # a probability in [0, 1)
    p.add_argument('--repo-id', type=hub_repo_id)            # ORG/NAME, huggingface_hub's own rules

Checks that tie two arguments together (warm-up not longer than the run, an image size that the patch size
divides) are functions here too (:func:`check_warmup`, :func:`check_img_size`), raising :class:`ArgumentError`,
a :class:`~timm_mlit.errors.UserInputError`.
"""
import argparse
import math
import re
from typing import Any, Callable, Dict, Iterable, Optional

from .errors import UserInputError

__all__ = ['ArgumentError', 'finite_float', 'positive_float', 'nonneg_float', 'positive_int', 'nonneg_int',
           'int_in', 'float_in', 'probability', 'drop_rate', 'fraction', 'num_classes', 'hub_repo_id',
           'model_kwargs', 'check_train_recipe', 'check_warmup', 'check_img_size', 'check_model_kwargs', 'MAX_CLASSES',
           'MAX_LR', 'learning_rate', 'lr_floor',
           'DROP_RATE_KEYS', 'plain_text', 'ProseHelpFormatter']

MAX_CLASSES = 100_000  # more than any classification dataset (ImageNet-21k: 21,841); a larger count is a typo
# far above any useful learning rate, far below what overflows the optimisers' float32 step (AdamW divides the LR
# by its bias correction, 1 - beta1 = 0.1 at the first step: --lr 1e38 ended in torch's 'cannot be converted to
# type float without overflow')
MAX_LR = 1e3

# the rate arguments of the zoo's models (and of timm's ViTs): dropout probabilities, each in [0, 1)
DROP_RATE_KEYS = ('drop_rate', 'pos_drop_rate', 'attn_drop_rate', 'proj_drop_rate', 'drop_path_rate',
                  'expert_drop_rate', 'patch_drop_rate')


# reST markup of the docstrings that double as --help text: roles (:func:`~a.b`), literals (``x``), directives
_ROLE = re.compile(r':(?:[a-z]+:)?[a-z]+:`(~?)([^`<]*?)(?:\s*<[^`>]*>)?`')
_LITERAL = re.compile(r'``(.+?)``', re.S)
_DIRECTIVE = re.compile(r'^(\s*)\.\. ([a-z-]+)::\s*', re.M)


def plain_text(text: str) -> str:
    """``text`` (a docstring written in reST) as plain prose for a terminal: ``:func:`~a.b``` becomes ``b``,
    a double-backquoted literal its content, ``.. note::`` becomes ``Note:``, and a paragraph's closing ``::`` a
    colon. What reST leaves plain (indented examples, lists) is kept as it is."""
    text = _ROLE.sub(lambda m: m.group(2).rsplit('.', 1)[-1] if m.group(1) else m.group(2), text)
    text = _LITERAL.sub(lambda m: m.group(1), text)
    text = _DIRECTIVE.sub(lambda m: f'{m.group(1)}{m.group(2).capitalize()}: ', text)
    return re.sub(r'(\S)::$', r'\1:', re.sub(r'\s::$', '', text, flags=re.M), flags=re.M)


class ProseHelpFormatter(argparse.RawDescriptionHelpFormatter):
    """argparse's formatter for a command whose description is its module docstring: the description keeps its
    line breaks (RawDescriptionHelpFormatter), and reST markup in it and in each argument's help is turned into
    plain prose (:func:`plain_text`), so ``--help`` prints prose and options."""

    def _fill_text(self, text, width, indent):
        return super()._fill_text(plain_text(text), width, indent)

    def _split_lines(self, text, width):
        return super()._split_lines(plain_text(text), width)


class ArgumentError(UserInputError):
    """An argument (or a pair of them) out of range; the message names it, the range and the fix."""


def _number(text: str, kind: type, expected: str) -> Any:
    try:
        value = kind(text)
    except (TypeError, ValueError):
        raise argparse.ArgumentTypeError(f'{text!r} is not {"an integer" if kind is int else "a number"}; '
                                         f'expected {expected}') from None
    if kind is float and not math.isfinite(value):
        raise argparse.ArgumentTypeError(f'{text!r} is not a finite number; expected {expected}')
    return value


def _ranged(kind: type, lo: Optional[float], hi: Optional[float], lo_open: bool, hi_open: bool,
            expected: str) -> Callable[[str], Any]:
    def parse(text: str):
        value = _number(text, kind, expected)
        if (lo is not None and (value < lo or (lo_open and value == lo))) or \
                (hi is not None and (value > hi or (hi_open and value == hi))):
            raise argparse.ArgumentTypeError(f'{text!r} is out of range; expected {expected}')
        return value
    parse.__name__ = expected  # argparse names the type in its 'invalid ... value' message
    return parse


def float_in(lo: Optional[float] = None, hi: Optional[float] = None, lo_open: bool = False,
             hi_open: bool = False, expected: str = '') -> Callable[[str], float]:
    """A finite float in [lo, hi] (open ends where asked)."""
    if not expected:
        left = '' if lo is None else f'{"> " if lo_open else ">= "}{lo}'
        right = '' if hi is None else f'{"< " if hi_open else "<= "}{hi}'
        expected = 'a finite number' + (f' {left}' if left else '') + (' and' if left and right else '') + \
            (f' {right}' if right else '')
    return _ranged(float, lo, hi, lo_open, hi_open, expected)


def int_in(lo: Optional[int] = None, hi: Optional[int] = None, expected: str = '') -> Callable[[str], int]:
    """An integer in [lo, hi]."""
    if not expected:
        expected = 'an integer' + ('' if lo is None else f' >= {lo}') + (' and' if lo is not None and hi is not None
                                                                          else '') + ('' if hi is None else f' <= {hi}')
    return _ranged(int, lo, hi, False, False, expected)


finite_float = float_in(expected='a finite number')
positive_float = float_in(0, lo_open=True, expected='a finite number > 0')
nonneg_float = float_in(0, expected='a finite number >= 0')
positive_int = int_in(1, expected='a positive integer (1, 2, ...)')
nonneg_int = int_in(0, expected='an integer >= 0')
probability = float_in(0, 1, expected='a probability in [0, 1]')
drop_rate = float_in(0, 1, hi_open=True, expected='a drop rate in [0, 1) (1 would drop everything)')
fraction = float_in(0, 1, lo_open=True, hi_open=True, expected='a fraction strictly between 0 and 1')
num_classes = int_in(0, MAX_CLASSES, expected=f'a number of classes, 0 (no classifier) to {MAX_CLASSES}')
learning_rate = float_in(0, MAX_LR, lo_open=True, expected=f'a learning rate > 0 and <= {MAX_LR:g}')
lr_floor = float_in(0, MAX_LR, expected=f'a learning rate >= 0 and <= {MAX_LR:g}')  # min_lr, warmup_lr


def hub_repo_id(text: str) -> str:
    """A Hugging Face Hub model repo id, ORG/NAME (huggingface_hub's rules: letters, digits, '-', '_', '.', at most
    96 characters per part, no '..' or '--', not starting or ending with '-' or '.')."""
    from huggingface_hub.utils import HFValidationError, validate_repo_id
    try:
        validate_repo_id(text)
    except HFValidationError as e:
        raise argparse.ArgumentTypeError(
            f'{text!r} is not a valid Hub repo id ({str(e).split(":")[0].rstrip(".")}); expected ORG/NAME such as '
            f'my-org/mlit_xxs.c10') from None
    if '/' not in text:
        raise argparse.ArgumentTypeError(f'{text!r} has no organisation; expected ORG/NAME such as my-org/{text}')
    return text


def check_model_kwargs(kwargs: Dict[str, Any], where: str) -> Dict[str, Any]:
    """Refuse drop rates outside [0, 1), and image and patch sizes that are not positive integers; ``where`` names
    the argument in the message. Returns ``kwargs``."""
    for key in DROP_RATE_KEYS:
        value = kwargs.get(key)
        if value is None:
            continue
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not (
                math.isfinite(value) and 0 <= value < 1):
            raise ArgumentError(f'{where}: {key}={value!r}; expected a drop rate in [0, 1) (1 would drop '
                                f'everything). Fix the value.')
    for key in ('img_size', 'patch_size'):
        value = kwargs.get(key)
        sides = value if isinstance(value, (list, tuple)) and len(value) == 2 else [value]
        if value is not None and not all(isinstance(s, int) and not isinstance(s, bool) and s > 0 for s in sides):
            raise ArgumentError(f'{where}: {key}={value!r}; expected a positive integer (or a pair of them). '
                                f'Fix the value.')
    if kwargs.get('img_size') is not None and kwargs.get('patch_size') is not None:
        check_img_size(kwargs['img_size'], kwargs['patch_size'], where,
                       padded=bool(kwargs.get('dynamic_img_pad')))
    return kwargs


def model_kwargs(text: str) -> Dict[str, Any]:
    """A YAML/JSON mapping of model arguments (``{decoder_num_experts: 0}``), checked by :func:`check_model_kwargs`."""
    import yaml
    example = "'{decoder_num_experts: 0}'"
    try:
        value = yaml.safe_load(text)
    except yaml.YAMLError as e:
        raise argparse.ArgumentTypeError(f'{text!r} is not YAML ({str(e).splitlines()[0]}); expected a mapping such '
                                         f'as {example}') from None
    if not isinstance(value, dict):
        raise argparse.ArgumentTypeError(f'{text!r} is a {type(value).__name__}; expected a mapping such as {example}')
    try:
        return check_model_kwargs(value, text)
    except ArgumentError as e:
        raise argparse.ArgumentTypeError(str(e)) from None


def check_img_size(img_size, patch_size, where: str, padded: bool = False) -> None:
    """Refuse an image size the patch size does not divide (the last row and column of pixels would be dropped
    without a word), unless the model pads them (``dynamic_img_pad``)."""
    sizes = img_size if isinstance(img_size, (list, tuple)) else (img_size, img_size)
    patches = patch_size if isinstance(patch_size, (list, tuple)) else (patch_size, patch_size)
    if not all(isinstance(v, int) and not isinstance(v, bool) and v > 0 for v in (*sizes, *patches)):
        raise ArgumentError(f'{where}: image size {img_size!r} and patch size {patch_size!r}; expected positive '
                            f'integers (or pairs of them). Fix the values.')
    if padded or all(s % p == 0 for s, p in zip(sizes, patches)):
        return
    fits = sorted({(s // p) * p for s, p in zip(sizes, patches)} | {(s // p + 1) * p for s, p in zip(sizes, patches)})
    raise ArgumentError(
        f'{where}: image size {img_size} is not a multiple of the patch size {patch_size}: the last '
        f'{sizes[0] % patches[0] or sizes[1] % patches[1]} rows/columns of pixels would not be seen. Use an image size '
        f'divisible by {patch_size} (e.g. {", ".join(map(str, [f for f in fits if f > 0][:2]))}), or pad the images '
        f'(dynamic_img_size=True, dynamic_img_pad=True).')


def check_warmup(warmup_epochs: Optional[float], epochs: Optional[float], where: str = '--warmup-epochs') -> None:
    """Refuse a warm-up longer than the run (the learning rate would never reach its peak)."""
    if warmup_epochs is not None and epochs is not None and warmup_epochs > epochs:
        raise ArgumentError(f'{where} {warmup_epochs}: longer than the run\'s {epochs} epochs, so the learning rate '
                            f'would never reach its peak. Use a warm-up of at most {epochs} epochs (the recipes: 5%).')


# train.py's numeric arguments that a recipe sets, with their range (train.py itself checks none of them)
_RECIPE_NUMBERS = {
    'epochs': positive_int, 'warmup_epochs': nonneg_int, 'cooldown_epochs': nonneg_int, 'batch_size': positive_int,
    'lr': learning_rate, 'lr_base': learning_rate, 'warmup_lr': lr_floor, 'min_lr': lr_floor,
    'weight_decay': nonneg_float, 'layer_decay': float_in(0, 1, lo_open=True), 'momentum': float_in(0, 1, hi_open=True),
    'drop': drop_rate, 'drop_path': drop_rate, 'smoothing': drop_rate, 'reprob': probability, 'mixup': nonneg_float,
    'cutmix': nonneg_float, 'mixup_prob': probability, 'mixup_switch_prob': probability, 'hflip': probability,
    'vflip': probability, 'num_classes': num_classes, 'model_ema_decay': float_in(0, 1, hi_open=True),
    'clip_grad': positive_float, 'grad_accum_steps': positive_int,
}


def _check_recipe_value(path: str, key: str, value) -> None:
    check = _RECIPE_NUMBERS.get(key)
    if check is None or value is None:
        return
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ArgumentError(f'recipe {path}: {key}: {value!r} is not a number; expected {check.__name__}. Fix the '
                            f'value in the file.')
    try:
        check(str(value))
    except argparse.ArgumentTypeError as e:
        raise ArgumentError(f'recipe {path}: {key}: {e}. Fix the value in the file.') from None


def check_train_recipe(path: str, keys: Iterable[str]):
    """Read ``path`` as a train.py recipe: YAML holding a mapping of train.py's arguments (``keys``, by their dest
    names) with numbers in range and a warm-up not longer than the run. Returns the mapping."""
    import yaml
    from pathlib import Path
    file = Path(path)
    try:
        text = file.read_text(encoding='utf-8')
    except (OSError, UnicodeDecodeError) as e:
        raise ArgumentError(f'recipe {path}: cannot be read as text ({e.__class__.__name__}); expected a YAML file '
                            f'of train.py\'s arguments. Pass such a file, or a shipped recipe\'s name '
                            f'(mlit-config --list).') from None
    try:
        cfg = yaml.safe_load(text)
    except yaml.YAMLError as e:
        raise ArgumentError(f'recipe {path} is not valid YAML ({str(e).splitlines()[0]}); expected a mapping of '
                            f'train.py\'s arguments such as "epochs: 100". Fix the file.') from None
    if not isinstance(cfg, dict) or not cfg:
        raise ArgumentError(f'recipe {path} holds {"nothing" if not cfg else "a " + type(cfg).__name__}; expected a '
                            f'mapping of train.py\'s arguments such as "epochs: 100" on its own line. Fix the file.')
    unknown = sorted(str(k) for k in cfg if k not in set(keys))
    if unknown:
        raise ArgumentError(f'recipe {path}: {unknown} are not train.py arguments; the keys are train.py\'s '
                            f'arguments with "_" for "-" (train.py --help). Fix or remove them.')
    for key, value in cfg.items():
        _check_recipe_value(path, key, value)
    if isinstance(cfg.get('model_kwargs'), dict):
        check_model_kwargs(cfg['model_kwargs'], f'recipe {path}: model_kwargs')
    check_warmup(cfg.get('warmup_epochs'), cfg.get('epochs'), f'recipe {path}: warmup_epochs')
    return cfg
