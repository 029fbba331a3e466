"""The course's four text tasks as instructions for a decoder (chapter 12): a prompt per text, words per class.

Example i of task t becomes the user's turn ``INSTRUCTIONS[t].format(text=texts[i])`` and the
assistant's answer ``ANSWERS[t][label_names[labels[i]]]``. The instruction names every answer the
task allows, so that a model that has never seen the task can still pick one (zero-shot), and the
answers are plain lower-case words, what an instruction-tuned model tends to say. The wording was
fixed before any model was scored with it; it is one choice among many (a different wording can move
zero-shot accuracy by several points), which is why a chapter compares methods on the same prompts.
"""

from __future__ import annotations

from mtl_tutorial.data.text_tasks import TextTask

INSTRUCTIONS = {
    "sentiment": ("Is the following drug review positive, neutral or negative? Answer with one word.\n\n"
                  "Review: {text}"),
    "condition": ("Which condition was the drug in the following review taken for: acne, birth control, "
                  "depression, pain, or other? Answer with the condition only.\n\nReview: {text}"),
    "supersense": ("The following dictionary gloss defines a word. Which category does that word belong to: "
                   "animal, artifact, person, plant (nouns); change, communication, contact, motion (verbs); "
                   "adjective, relational adjective, or adverb? Answer with the category only.\n\nGloss: {text}"),
    "pos": ("The following dictionary gloss defines a word. Is that word a noun, a verb, an adjective or an "
            "adverb? Answer with one word.\n\nGloss: {text}"),
}
ANSWERS = {   # task -> {label name in the data: the answer's words}
    "sentiment": {"negative": "negative", "neutral": "neutral", "positive": "positive"},
    "condition": {"Acne": "acne", "Birth Control": "birth control", "Depression": "depression", "Pain": "pain",
                  "other": "other"},
    "supersense": {"adj.all": "adjective", "adj.pert": "relational adjective", "adv.all": "adverb",
                   "noun.animal": "animal", "noun.artifact": "artifact", "noun.person": "person", "noun.plant": "plant",
                   "verb.change": "change", "verb.communication": "communication", "verb.contact": "contact",
                   "verb.motion": "motion"},
    "pos": {"adjective": "adjective", "adverb": "adverb", "noun": "noun", "verb": "verb"},
}


def _check(task: TextTask) -> None:
    if task.name not in ANSWERS:
        raise ValueError(f"no instruction for task {task.name!r}; tasks with one are: {', '.join(sorted(ANSWERS))}")
    missing = [name for name in task.label_names if name not in ANSWERS[task.name]]
    if missing:
        raise ValueError(f"task {task.name!r} has labels with no answer words: {', '.join(missing)}; "
                         f"add them to ANSWERS[{task.name!r}]")


def instruction_prompts(task: TextTask, max_words: int | None = None) -> list[str]:
    """The user's turn for each of the task's texts: N strings (``INSTRUCTIONS[task.name]``).

    max_words: cut each text to its first ``max_words`` words (a drug review runs to 300 words; a gloss to 40).
    """
    _check(task)
    if max_words is not None and (not isinstance(max_words, int) or isinstance(max_words, bool) or max_words < 1):
        raise ValueError(f"max_words must be a positive int or None, got {max_words!r}")
    texts = task.texts if max_words is None else [" ".join(text.split()[:max_words]) for text in task.texts]
    return [INSTRUCTIONS[task.name].format(text=text) for text in texts]


def option_answers(task: TextTask) -> list[str]:
    """The answer of each class, in label order: C strings (``ANSWERS[task.name]``)."""
    _check(task)
    return [ANSWERS[task.name][name] for name in task.label_names]


def instruction_answers(task: TextTask) -> list[str]:
    """The answer of each example, its class's words: N strings."""
    options = option_answers(task)
    return [options[label] for label in task.labels.tolist()]
