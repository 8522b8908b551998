from ov2_plugin import build_caption_tokenizer


def test_special_ids_and_framing():
    tok = build_caption_tokenizer()
    assert (tok.pad_token_id, tok.bos_token_id, tok.eos_token_id) == (0, 1, 2)
    assert len(tok) == 30522
    ids = tok("Two red circles.").input_ids
    assert ids[0] == 1 and ids[-1] == 2
    assert tok.decode(ids, skip_special_tokens=True) == "two red circles."


def test_truncation_keeps_eos_at_128():
    tok = build_caption_tokenizer()
    ids = tok("word " * 500, truncation=True).input_ids
    assert len(ids) == 128 and ids[0] == 1 and ids[-1] == 2


def test_padding_is_zero_on_the_right():
    tok = build_caption_tokenizer()
    enc = tok(["a", "a much longer caption here"], padding=True)
    assert enc.input_ids[0][-1] == 0 and enc.attention_mask[0][-1] == 0
