import pytest

from llava.conversation import build_prompt, get_conversation

VICUNA_SYSTEM = ("A chat between a curious user and an artificial intelligence assistant. The assistant gives "
                 "helpful, detailed, and polite answers to the user's questions.")


def test_vicuna_v1_single_turn_matches_llava_character_for_character():
    prompt = build_prompt("What is this?\nAnswer the question using a single word or phrase.")
    expected = (VICUNA_SYSTEM + " USER: <image>\nWhat is this?\nAnswer the question using a single word or phrase."
                " ASSISTANT:")
    assert prompt == expected
    assert not prompt.endswith(" ")


def test_llava_v1_differs_only_in_system_text():
    prompt = build_prompt("Q", conv_mode="llava_v1", with_image=False)
    assert prompt == ("A chat between a curious human and an artificial intelligence assistant. The assistant "
                      "gives helpful, detailed, and polite answers to the human's questions. USER: Q ASSISTANT:")


def test_multi_turn_uses_sep_and_sep2():
    conv = get_conversation("vicuna_v1")
    conv.append_message("USER", "hi")
    conv.append_message("ASSISTANT", "hello")
    conv.append_message("USER", "bye")
    conv.append_message("ASSISTANT", None)
    assert conv.get_prompt() == VICUNA_SYSTEM + " USER: hi ASSISTANT: hello</s>USER: bye ASSISTANT:"


def test_templates_are_not_shared_between_copies():
    a = get_conversation("vicuna_v1")
    a.append_message("USER", "x")
    assert get_conversation("vicuna_v1").messages == []


def test_unknown_conv_mode_is_a_clear_error():
    with pytest.raises(ValueError, match="unknown conversation mode 'vicuna_v2'.*vicuna_v1"):
        get_conversation("vicuna_v2")
