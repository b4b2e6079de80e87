"""The `paper` data of IOI, Greater-Than and Docstring are the original implementation's prompts,
bit for bit: every array and string list against the SHA-256 fingerprints measured by running the
original's own generators (`original-task-data.md`: token arrays as little-endian int64 and
int32 in C order; string lists as `json.dumps(list, ensure_ascii=False)` in UTF-8), and the first
prompts it lists."""

import hashlib
import json

import numpy as np
import pytest

from jacdc.tasks import (
    load_task,
    make_docstring_prompts,
    make_greater_than_prompts,
    make_ioi_prompts,
)


def sha_tokens(array, dtype) -> str:
    array = np.ascontiguousarray(np.asarray(array).astype(np.dtype(dtype).newbyteorder("<")))
    return hashlib.sha256(array.tobytes()).hexdigest()


def sha_json(items) -> str:
    return hashlib.sha256(json.dumps(items, ensure_ascii=False).encode("utf-8")).hexdigest()


def check_tokens(array, shape, int64, int32):
    assert np.asarray(array).shape == shape
    assert sha_tokens(array, np.int64) == int64
    assert sha_tokens(array, np.int32) == int32


# ---- IOI ---------------------------------------------------------------------------------------

IOI = {
    "val": dict(
        clean=(
            "fe8d0f2ddd8a60728624450e9aa149f12d66225ff39a008fa9e1ab69492e274f",
            "25348bc74a136557f787bdfce33adfd2c852812ba402b879eabccbe88eee95fc",
        ),
        corrupted=(
            "b3949f8e31bb0e75257086d571819736a6b17c7068f1f0c6bce9febe02cdfef1",
            "7398556a55f1683558ab49ba95908633356162fd0557d4d15f238238756af88a",
        ),
        io=(
            "747af805e40825637faa1eefe3d0e2c21f44b7a7be0e9ba460f13b831c141a5e",
            "98d3de25a60b42997d5fef389174f3446a54305197631904b3b30c212e345073",
        ),
        s=(
            "67c0b636c009e6796b91d4423520503531924bd38ae3362b45f0d55efed277c2",
            "39c666b5bc5a37cbb1fdf323882455dc42dfc542425e9c224bba47cf2c3aabee",
        ),
        clean_json="d978e06242d1193ece840fe15940d195fb6a2070adda3f1abec7de7124ec728b",
        corrupted_json="4c18142e10edc77e33d1e071889d510fdbadeec96203f3595e939bafb5b26c37",
        first=[
            (
                "Then, Mary and Jeffrey went to the restaurant. Jeffrey gave a bone to Mary",
                "Then, Melissa and Nicole went to the restaurant. Anthony gave a bone to Melissa",
            ),
            (
                "Then, Brittany and Jamie went to the garden. Jamie gave a necklace to Brittany",
                "Then, Lauren and Alicia went to the garden. Daniel gave a necklace to Lauren",
            ),
            (
                "Then, Christine and Amy went to the station. Amy gave a drink to Christine",
                "Then, Thomas and Elizabeth went to the station. Jesse gave a drink to Thomas",
            ),
        ],
        first_row=[
            6423,
            11,
            5335,
            290,
            19627,
            1816,
            284,
            262,
            7072,
            13,
            19627,
            2921,
            257,
            9970,
            284,
        ],
    ),
    "test": dict(
        clean=(
            "39a8132abffe1c79895a4bf80591c5c2d8cc0f093471c894b038954933a63966",
            "77813105fb67a3bbb865a0067b8c105e498a1c143223468339c0b2a9786dd580",
        ),
        corrupted=(
            "7bb75986ced9d9045b63e925cf08c9e72b343c1054e37aa97dba9a3ff3dea148",
            "4f9f1005c9531082dbd02763f30c9ffcde943bcb89c4b0d5aa5f1f0479359c6a",
        ),
        io=(
            "b2bae91a22b7f23bd0ccf3da59b9e8a1cf19643998a3485799fd298956f1ad9f",
            "01f45870d9ad43bd120e886ba8b50d0983af917b774240b1ddf2e535e89dcf06",
        ),
        s=(
            "d134d8544e6ef150698f696b4a779a5d1d617b889b8b9bdd9e43034838085d8c",
            "24b98809f97a70e908ed9b7bab7658c49ca88cf2792e899b8de5cfb769d9f982",
        ),
        clean_json="8a1ee3faae9c6063c4f25882c91f34b51b41b3639955705f884a42548391dce3",
        corrupted_json="818790d90ab6c59db2c6c36b15596410426576ec67f058d1dd7e8b5e8b63d7c3",
        first=[
            (
                "Then, Jessica and Rachel went to the garden. Rachel gave a drink to Jessica",
                "Then, Amy and Patrick went to the garden. Mark gave a drink to Amy",
            ),
            (
                "Then, Nicole and Katherine went to the restaurant. Katherine gave a ring to "
                "Nicole",
                "Then, Travis and Jamie went to the restaurant. Christina gave a ring to Travis",
            ),
            (
                "Then, Christina and Shannon went to the garden. Shannon gave a ring to Christina",
                "Then, Kyle and Allison went to the garden. Lindsey gave a ring to Kyle",
            ),
        ],
        first_row=[
            6423,
            11,
            17352,
            290,
            15984,
            1816,
            284,
            262,
            11376,
            13,
            15984,
            2921,
            257,
            4144,
            284,
        ],
    ),
}


def test_ioi_paper_prompts_are_the_originals(gpt2_tok):
    prompts = make_ioi_prompts(gpt2_tok)  # data="paper" is the default
    for split, rows in (("val", slice(0, 100)), ("test", slice(100, 200))):
        want = IOI[split]
        check_tokens(prompts.clean_tokens[rows], (100, 15), *want["clean"])
        check_tokens(prompts.corrupted_tokens[rows], (100, 15), *want["corrupted"])
        check_tokens(prompts.io_tokens[rows], (100,), *want["io"])
        check_tokens(prompts.s_tokens[rows], (100,), *want["s"])
        assert sha_json(prompts.clean_full[rows]) == want["clean_json"]
        assert sha_json(prompts.corrupted_full[rows]) == want["corrupted_json"]
        pairs = list(zip(prompts.clean_full[rows], prompts.corrupted_full[rows]))
        assert pairs[:3] == want["first"]
        assert prompts.clean_tokens[rows][0].tolist() == want["first_row"]
        # What the model reads is the sentence without its last name.
        assert prompts.clean[rows][0] == want["first"][0][0].rsplit(" ", 1)[0]


def test_ioi_paper_bundle(ioi_bundle):
    """The registry's default IOI task carries the original's arrays into its splits."""
    assert ioi_bundle.info["data"] == "paper"
    for split, task in (("val", ioi_bundle.val), ("test", ioi_bundle.test)):
        want = IOI[split]
        check_tokens(task.clean, (100, 15), *want["clean"])
        check_tokens(task.corrupted, (100, 15), *want["corrupted"])
        metric = task.metric("logit_diff")
        check_tokens(metric.correct, (100,), *want["io"])
        check_tokens(metric.wrong, (100,), *want["s"])


# ---- Greater-Than ----------------------------------------------------------------------------

GREATER_THAN = {
    "val": dict(
        clean=(
            "1eecbcdd3ec01a4c55a6f0172d2359dc94b77436e01e08906346b28811b7abb1",
            "d94996a9516b45b05b9beb212fb858da6b48d9add3335d95cbb7a864ac56f219",
        ),
        corrupted=(
            "317c17b3e04837d08e2c506a216a2571596a6ac46cd9d4ddcb8cde6087261f3b",
            "5d540609f6b3d03ee482aebf65da82a019db62b1eea26ab780ab5a37d2a67c77",
        ),
        clean_json="3701e16ce65a8e386d72a22e17cf15739627034242f8c2514065a02d21097697",
        first=[
            (
                "The demonstrations lasted from the year 1289 to 12",
                "The demonstrations lasted from the year 1201 to 12",
            ),
            (
                "The assaults lasted from the year 1537 to 15",
                "The assaults lasted from the year 1501 to 15",
            ),
            (
                "The affair lasted from the year 1282 to 12",
                "The affair lasted from the year 1201 to 12",
            ),
        ],  # fmt: skip
        first_row=[464, 18721, 15436, 422, 262, 614, 1105, 4531, 284, 1105],
    ),
    "test": dict(
        clean=(
            "19949565227b947c39683338bb9d1b2a57df9f60ef58e618cd2c51de962c3a8d",
            "725ee3fccb60566df471505cfed549814d78a1cfbffcdfedc937e7298f379403",
        ),
        corrupted=(
            "5aa2c4f0cb15a4d3f7fa45f8bad50927dfd38addcfe204bb682de23b26ccde34",
            "9ddd680d59388f55b4d38a6338791b9897252b38a83a4e7eafb8d16f3768099c",
        ),
        clean_json="78f4a7431e8d4faddefbdc7bc573b9d558d0cf6803a022cad9423c42642bbf84",
        first=[
            (
                "The warfare lasted from the year 1246 to 12",
                "The warfare lasted from the year 1201 to 12",
            ),
            (
                "The outcome lasted from the year 1614 to 16",
                "The outcome lasted from the year 1601 to 16",
            ),
            (
                "The slump lasted from the year 1766 to 17",
                "The slump lasted from the year 1701 to 17",
            ),
        ],  # fmt: skip
        first_row=[464, 15611, 15436, 422, 262, 614, 1105, 3510, 284, 1105],
    ),
}


def test_greater_than_paper_prompts_are_the_originals(gpt2_tok):
    prompts = make_greater_than_prompts(gpt2_tok)
    for split, rows in (("val", slice(0, 100)), ("test", slice(100, 200))):
        want = GREATER_THAN[split]
        check_tokens(prompts.clean_tokens[rows], (100, 10), *want["clean"])
        check_tokens(prompts.corrupted_tokens[rows], (100, 10), *want["corrupted"])
        assert sha_json(prompts.clean[rows]) == want["clean_json"]
        assert list(zip(prompts.clean[rows], prompts.corrupted[rows]))[:3] == want["first"]
        assert prompts.clean_tokens[rows][0].tolist() == want["first_row"]


def test_greater_than_paper_bundle(greater_than_bundle):
    assert greater_than_bundle.info["data"] == "paper"
    for split, task in (("val", greater_than_bundle.val), ("test", greater_than_bundle.test)):
        check_tokens(task.clean, (100, 10), *GREATER_THAN[split]["clean"])
        check_tokens(task.corrupted, (100, 10), *GREATER_THAN[split]["corrupted"])


# ---- Docstring -------------------------------------------------------------------------------

DOCSTRING = {
    "val": dict(
        clean="60d74eb9da3ad6ea82fe2fe9bb7a87a978561f83984bd07e520be5e52864a859",
        corrupted="a41e9ec0e158b541fd715bf8ee529ececc05e96053be5255f76f7f1d924bc03b",
        correct="a07acea7002c238ddf3a9e077bcf6264f7a290ee66d2f0d2447029c47ed6043d",
        wrong="361be2cf684aad6b38d1704bf1929579844ae4037069feb217a5182444bc058b",
        first_clean=[
            '\ndef old(self, first, files, page, names, size, read):\n    """sector gap '
            "population\n\n    :param page: message tree\n    :param names: detail mine\n    "
            ":param",
            '\ndef model(self, fields, page, table, config, count, number):\n    """unit bone '
            "paper\n\n    :param table: selection sky\n    :param config: host action\n    :param",
            '\ndef root(self, event, context, task, tag, resource, base):\n    """stone delay '
            "sense\n\n    :param task: reply sea\n    :param tag: search wire\n    :param",
        ],
        first_corrupted=[
            '\ndef old(self, first, files, project, target, new, read):\n    """sector gap '
            "population\n\n    :param image: message tree\n    :param update: detail mine\n    "
            ":param",
            '\ndef model(self, fields, page, old, option, project, number):\n    """unit bone '
            "paper\n\n    :param user: selection sky\n    :param context: host action\n    :param",
            '\ndef root(self, event, context, line, request, default, base):\n    """stone delay '
            "sense\n\n    :param form: reply sea\n    :param names: search wire\n    :param",
        ],
        first_correct=[" size", " count", " resource"],
        first_wrong=[
            " instance",
            " project",
            " target",
            " new",
            " image",
            " update",
            " required",
            " run",
            " page",
            " names",
            " first",
            " files",
            " read",
        ],
    ),  # fmt: skip
    "test": dict(
        clean="4d46ea2fcbca63bc479de7566e9b5d9f9519ab113ce2e0a15113b3e7cf6f95e4",
        corrupted="0dc31988d822eedbb99ba3cc8f05d4f08219c3154ea6f2f69e21b1d4ba475d94",
        correct="9770523ee3fe809b1093d465368ae482bcbffd5044ba6f6d4b3f862ff4ba914d",
        wrong="8a6d3401bcf3608430ab53a9a6ee73e18d1f9e5ffbe125b062d6ca2d6d7b68a3",
        first_clean=[
            '\ndef options(self, state, sub, obj, default, group, title):\n    """poll story '
            "list\n\n    :param obj: wine computer\n    :param default: wine master\n    :param",
            '\ndef current(self, session, status, label, msg, date, settings):\n    """skin '
            "intelligence button\n\n    :param label: author writing\n    :param msg: race "
            "neck\n    :param",
            '\ndef message(self, names, string, model, version, option, end):\n    """heat drop '
            "control\n\n    :param model: building hat\n    :param version: writing gallery\n"
            "    :param",
        ],
        first_corrupted=[
            '\ndef options(self, state, sub, message, form, order, title):\n    """poll story '
            "list\n\n    :param current: wine computer\n    :param call: wine master\n    :param",
            '\ndef current(self, session, status, ret, client, version, settings):\n    """skin '
            "intelligence button\n\n    :param load: author writing\n    :param index: race "
            "neck\n    :param",
            '\ndef message(self, names, string, host, update, first, end):\n    """heat drop '
            "control\n\n    :param resource: building hat\n    :param query: writing gallery\n"
            "    :param",
        ],
        first_correct=[" group", " date", " option"],
        first_wrong=[
            " resource",
            " message",
            " form",
            " order",
            " current",
            " call",
            " config",
            " info",
            " obj",
            " default",
            " state",
            " sub",
            " title",
        ],
    ),  # fmt: skip
}


def test_docstring_paper_prompts_are_the_originals(gpt2_tok):
    prompts = make_docstring_prompts(gpt2_tok, bos=gpt2_tok.eot_token_id)
    for split, rows in (("val", slice(0, 50)), ("test", slice(50, 100))):
        want = DOCSTRING[split]
        assert sha_json(prompts.clean[rows]) == want["clean"]
        assert sha_json(prompts.corrupted[rows]) == want["corrupted"]
        assert sha_json([[a] for a in prompts.answers[rows]]) == want["correct"]
        assert sha_json(prompts.wrong_answers[rows]) == want["wrong"]
        assert prompts.clean[rows][:3] == want["first_clean"]
        assert prompts.corrupted[rows][:3] == want["first_corrupted"]
        assert prompts.answers[rows][:3] == want["first_correct"]
        assert prompts.wrong_answers[rows][0] == want["first_wrong"]


def test_docstring_paper_bundle(docstring_bundle, gpt2_tok):
    """The registry's default docstring task: the original's prompts, BOS first, answers read
    with the tokenizer (here GPT-2's, standing in for attn-only-4l's)."""
    b = docstring_bundle
    assert b.info["data"] == "paper" and b.info["seq_len"] == 53
    assert sha_json(b.info["val_prompts"]) == DOCSTRING["val"]["clean"]
    assert sha_json(b.info["test_prompts"]) == DOCSTRING["test"]["clean"]
    clean = np.asarray(b.val.clean)
    assert (clean[:, 0] == gpt2_tok.eot_token_id).all()
    assert clean[0, 1:].tolist() == gpt2_tok.encode(DOCSTRING["val"]["first_clean"][0])
    metric = b.val.metric("docstring_metric")
    assert gpt2_tok.decode([int(metric.correct[0])]) == " size"
    assert [gpt2_tok.decode([int(t)]) for t in metric.wrong[0]] == DOCSTRING["val"]["first_wrong"]


def test_unknown_data_option(gpt2_vocab_model, gpt2_tok):
    for name in ("ioi", "greater-than"):
        with pytest.raises(ValueError, match="Unknown .* data 'orig'.*data='paper'"):
            load_task(name, model=gpt2_vocab_model, tokenizer=gpt2_tok, data="orig")


def test_paper_draws_need_no_torch(gpt2_tok):
    """The original's torch draws come from jacdc's own emulation: the same draws in a fresh
    interpreter in which `import torch` fails."""
    import subprocess
    import sys

    from jacdc.tasks._paper_data import paper_greater_than_draws

    code = (
        "import sys; sys.modules['torch'] = None\n"
        "from jacdc.tasks._paper_data import paper_greater_than_draws\n"
        "print(paper_greater_than_draws(604, 200))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == str(paper_greater_than_draws(604, 200))
    prompts = make_greater_than_prompts(gpt2_tok)
    assert prompts.nouns == paper_greater_than_draws(604, 200)[0]  # 604 years with GPT-2's BPE
