#!/usr/bin/env python3
"""Writes the malformed adapter_config.json files of tests/test_reliability.cpp (run here).
Each must be refused by config_from_json with the message the test names."""
import json

L = {"peft_type": "LORA", "target_modules": ["lin0"]}
A = {"peft_type": "ADALORA", "target_modules": ["lin0"], "total_step": 10}
cases = {
    "not_json": '{"peft_type": "LORA", "r": ',
    "not_object": "[1, 2]",
    "empty": "",
    "no_peft_type": {"r": 8},
    "peft_type_not_string": {"peft_type": 7},
    "unknown_peft_type": {"peft_type": "PROMPT_TUNING"},
    "deep_nesting": '{"peft_type": "LORA", "x": ' + "[" * 1000 + "]" * 1000 + "}",
    "r_string": dict(L, r="8"),
    "r_zero": dict(L, r=0),
    "r_huge": dict(L, r=2 ** 40),
    "r_uint64": '{"peft_type": "LORA", "r": 18446744073709551615}',
    "r_float": dict(L, r=8.5),
    "alpha_string": dict(L, lora_alpha="16"),
    "bias_unknown": dict(L, bias="some"),
    "target_modules_int": dict(L, target_modules=5),
    "target_modules_mixed": dict(L, target_modules=["a", 1]),
    "layers_to_transform_with_regex": dict(L, target_modules="lin.*", layers_to_transform=[0]),
    "rank_pattern_not_int": dict(L, rank_pattern={"lin0": "4"}),
    "rank_pattern_huge": dict(L, rank_pattern={"lin0": 2 ** 40}),
    "rank_pattern_negative": dict(L, rank_pattern={"lin0": -1}),
    "init_weights_unknown": dict(L, init_lora_weights="pissa"),
    "dora_with_lora_bias": dict(L, use_dora=True, lora_bias=True),
    "adalora_no_total_step": {"peft_type": "ADALORA", "target_modules": ["lin0"]},
    "adalora_init_r_huge": dict(A, init_r=2 ** 40),
    "adalora_total_step_uint64": '{"peft_type": "ADALORA", "total_step": 18446744073709551615}',
    "adalora_no_budget": dict(A, tinit=5, tfinal=5),
    "adalora_beta1": dict(A, beta1=1.5),
    "adalora_rank_pattern_not_bools": dict(A, rank_pattern={"lin0": [1, 0]}),
    "adalora_dora": dict(A, use_dora=True),
    "ia3_ff_not_subset": {"peft_type": "IA3", "target_modules": ["lin0"], "feedforward_modules": ["lin1"]},
    # found by tools/fuzz (fuzz_config): nlohmann type_error escaped instead of peft::Error
    "modules_to_save_not_strings": dict(L, modules_to_save=["lin2", 3]),
    "layers_to_transform_not_ints": dict(L, layers_to_transform=[0, "1"]),
    "layers_to_transform_float": dict(L, layers_to_transform=[0, 1.5]),
    "layers_pattern_not_strings": dict(L, layers_pattern=["layers", None]),
    "ia3_bool_as_string": {"peft_type": "IA3", "target_modules": ["lin0"], "fan_in_fan_out": "no"},
}
for name, c in cases.items():
    with open(name + ".json", "w") as f:
        f.write(c if isinstance(c, str) else json.dumps(c, separators=(",", ":")))
print(len(cases), "written")
