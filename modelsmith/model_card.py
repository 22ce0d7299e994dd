"""Model cards (`README.md` with Hugging Face's YAML header) for the default base and for repair adapters.

A card says what the directory is, the data it learnt from, how, how it scored and under which
license. It is documentation, not identity: a model version's digest covers its weights, config
and tokenizer but not its card (`modelsmith.model_dir.manifest`), so the adapter's card can be
filled with the pins before and after once the candidate has been pinned, without renaming it.

Adapters are made portable here too: peft writes the base's absolute path into
`adapter_config.json`; it is replaced by the base's digest (`sha256:<hex>`), which is how the
registry finds the base, so the adapter's digest does not depend on where its base lived.
"""

import json
from pathlib import Path

from modelsmith.atomic import write_text
from modelsmith.model_dir import MODEL_CARD

LICENSE = "apache-2.0"  # the project's license, under which it publishes the weights it trains


def base_reference(base_digest: str) -> str:
    return f"sha256:{base_digest}"


def make_portable(adapter_dir: Path, base_digest: str) -> None:
    """Name the base by its digest in `adapter_config.json` instead of the path it was trained from."""
    config_path = Path(adapter_dir) / "adapter_config.json"
    config = json.loads(config_path.read_text())
    config["base_model_name_or_path"] = base_reference(base_digest)
    write_text(config_path, json.dumps(config, indent=2, sort_keys=True) + "\n")


def _header(fields: dict) -> str:
    lines = ["---"]
    for key, value in fields.items():
        if isinstance(value, list):
            lines.append(f"{key}:")
            lines.extend(f"- {v}" for v in value)
        else:
            lines.append(f"{key}: {value}")
    return "\n".join(lines + ["---", ""])


def _table(rows: list[dict], columns: list[str]) -> str:
    out = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    out += ["| " + " | ".join(_cell(r.get(c)) for c in columns) + " |" for r in rows]
    return "\n".join(out)


def _cell(value) -> str:
    if isinstance(value, float):
        return f"{value:.4f}"
    return "–" if value is None else str(value)


def adapter_card(summary: dict, about: dict, delta: dict | None = None) -> str:
    """The card of a repair adapter: `summary` from `train_adapter`, `about` the cycle, data and policy."""
    heldout = summary["heldout"]
    parts = [
        _header({"library_name": "peft", "license": LICENSE, "base_model": base_reference(about["base_digest"]),
                 "pipeline_tag": "text-generation", "tags": ["lora", "modelsmith", "repair-adapter"]}),
        f"# Repair adapter for cycle {about.get('cycle', '?')}\n",
        "A LoRA adapter that repairs the base model's decisions on the segments a policy change regressed, "
        "trained by Modelsmith's repair loop. Load it with plain peft on the base whose digest is named above: "
        "`PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(BASE_DIR), ADAPTER_DIR)`.\n",
        "## Data\n",
        f"- dataset digest: `{about.get('dataset_digest', '?')}` ({summary['train_rows']} training rows, "
        f"{summary['heldout_rows']} held out)",
        f"- rows by source: {json.dumps(about.get('sources', {}), sort_keys=True)}",
        f"- labelled by policy `{about.get('policy_digest', '?')}`; diagnosis: {about.get('hypothesis', '?')}",
        f"- repair cycle `{about.get('cycle', '?')}`, base `{about['base_digest']}`\n",
        "## Training\n",
        f"- stages run: {', '.join(summary['stages'])}; precision: {summary['precision']}; "
        f"epoch kept: {summary['best_epoch']} of {summary.get('epochs_run', summary['best_epoch'])} run",
        f"- held-out accuracy: target {heldout.get('target', 0.0):.4f}, other rows {heldout['others']:.4f} "
        f"(before training {summary['heldout_others_before']:.4f})",
        *_validation_lines(summary.get("validation")),
        "- recipe:\n\n```json\n" + json.dumps(summary["recipe"], indent=2, sort_keys=True) + "\n```\n",
        "## Pins before and after\n",
    ]
    if delta is None:
        parts.append("Not pinned yet: the cycle's `candidate_pins` and `benchmark_delta` fill this section.\n")
    else:
        verdict = "offered for promotion" if delta["offer_for_promotion"] else "not offered"
        parts += [f"Verdict of the cycle: **{verdict}** (repaired: {', '.join(delta['repaired']) or 'none'}; "
                  f"flagged: {', '.join(delta['flagged']) or 'none'}).\n",
                  _table(delta["pins"], ["pin", "rows", "before", "after", "delta", "status"]), ""]
    parts += ["## License\n", f"{LICENSE}, as the Modelsmith project; the base model's own license also applies.\n"]
    return "\n".join(parts)


def _validation_lines(validation: dict | None) -> list[str]:
    if not validation:
        return []
    tried = ", ".join(f"{t['epoch']} ({'holds' if t['holds'] else 'does not hold'})" for t in validation["tried"])
    return [f"- validation pack: {validation['rows']} rows never trained on, judged with the pins' paired tests; "
            f"epochs tried best first: {tried}; kept: {validation['chosen_epoch']}"]


def base_card(record: dict) -> str:
    """The card of the embedded default base model, from its build record."""
    cfg = record["config"]
    rows = []
    for name, u in record.get("unseen", {}).items():
        rows.append({"pack": f"{name} (seed {cfg[f'{name}_pack_seed']})", "rows": u["rows"], "accuracy": u["accuracy"],
                     "lowest pin": u["min_pin_accuracy"], "pins under floor": ", ".join(u["pins_under_floor"]) or "none"})
    return "\n".join([
        _header({"library_name": "transformers", "license": LICENSE, "pipeline_tag": "text-generation",
                 "tags": ["llama", "modelsmith", "bidding-policy"]}),
        "# Modelsmith default base model\n",
        f"A tiny `LlamaForCausalLM` ({record['parameters']} parameters) with a WordLevel tokenizer over Modelsmith's "
        "compact prompt, trained from random weights to decide programmatic-ad bid requests under the shipped "
        "policy v1. It stands in for a team's own open-weights model where nothing can be downloaded.\n",
        "## Data\n",
        f"- a policy v1 scenario pack of seed {cfg['train_pack_seed']} ({record['rows']} rows; policy "
        f"`{record['policy_digest']}`); the pinned scenarios use another seed",
        f"- pins file `{record['pins_digest']}`\n",
        "## Training\n",
        f"- {record['rounds']} rounds of {cfg['epochs_per_round']} epochs, stopped at the first round whose "
        f"validation pack met every pin floor; final training loss {record['training_loss']:.4f}",
        "- recipe:\n\n```json\n" + json.dumps(cfg, indent=2, sort_keys=True) + "\n```\n",
        "## Accuracy on packs it never trained on\n",
        _table(rows, ["pack", "rows", "accuracy", "lowest pin", "pins under floor"]), "",
        "## License\n", f"{LICENSE}, as the Modelsmith project.\n",
    ])


def write_card(model_dir: Path, text: str) -> Path:
    path = Path(model_dir) / MODEL_CARD
    write_text(path, text)
    return path
