"""A word-level tokenizer with a ChatML chat template, for tests of chapter 12's code without downloading SmolLM2."""

CHATML = ("{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endfor %}"
          "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}")
SPECIAL = ["<unk>", "<pad>", "<|im_start|>", "<|im_end|>", "system", "user", "assistant", "\n"]


def word_level_chat_tokenizer(words, chat_template=CHATML):
    """A fast tokenizer whose vocabulary is ``SPECIAL`` then ``words``: one id per word, punctuation mark,
    newline and chat marker (spaces dropped, anything else <unk>); eos <|im_end|>, pad <pad>."""
    from tokenizers import Regex, Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    vocab = [*SPECIAL, *[w for w in words if w not in SPECIAL]]
    backend = Tokenizer(models.WordLevel({w: i for i, w in enumerate(vocab)}, unk_token="<unk>"))
    backend.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Split(Regex(" "), behavior="removed"),
        pre_tokenizers.Split(Regex(r"<\|im_start\|>|<\|im_end\|>|\n|\w+|[^\w\s]"), behavior="isolated")])
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=backend, unk_token="<unk>", pad_token="<pad>", eos_token="<|im_end|>")
    tokenizer.chat_template = chat_template
    return tokenizer
