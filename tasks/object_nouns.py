"""Which things does an instruction name that its caption does not have? (the color task's check)

The color task changes the whole photo; an instruction "make the red car brighter" over a caption
with no car teaches the editor that a global change means a car. Without a part-of-speech tagger,
"a thing" is a word of the closed list below: countable objects a photo shows (people, animals,
vehicles, furniture, food, clothing, buildings, landscape features). Words of one group stand for
each other, so "the dog" is present in "a golden retriever on a porch" and "the face" of a portrait
is no object at all: body parts, the sky, light and shadow, and words that are also colours
("orange", "lemon", "rose", "gold") are deliberately left out. A noun outside the list is never
held against an instruction: the check misses some, but does not reject good wording.
"""
from __future__ import annotations

from tasks.phrases import normalise_word, normalise_words

# group name -> words (plural forms that the naive singulariser in tasks/phrases.py does not fold
# are listed too: "men", "children", "knives")
_GROUPS: dict[str, str] = {
    "person": "person people man men woman women boy girl child children kid baby toddler lady ladies "
              "gentleman gentlemen guy bride groom family crowd player rider cyclist surfer skier "
              "skater skateboarder chef worker farmer fisherman fishermen soldier policeman student "
              "teacher tourist musician violinist guitarist dancer runner athlete knight doctor nurse "
              "pedestrian driver passenger vendor",
    "dog": "dog puppy pup retriever labrador corgi poodle terrier beagle husky bulldog dachshund spaniel "
           "collie pug greyhound chihuahua dalmatian rottweiler schnauzer hound",
    "cat": "cat kitten kitty tabby",
    "bird": "bird parrot pigeon dove seagull gull duck duckling swan owl eagle hawk falcon sparrow robin "
            "crow raven penguin flamingo hen rooster goose geese heron pelican peacock hummingbird "
            "parakeet finch woodpecker magpie stork ostrich toucan",
    "horse": "horse pony foal stallion",
    "cattle": "cow cattle bull calf calves ox oxen",
    "sheep": "sheep lamb",
    "pig": "pig piglet",
    "rabbit": "rabbit bunny hare",
    "bee": "bee honeybee bumblebee wasp",
    "car": "car sedan taxi cab jeep suv convertible coupe limousine automobile hatchback",
    "truck": "truck lorry pickup",
    "tram": "tram streetcar trolley",
    "train": "train locomotive",
    "bicycle": "bicycle bike",
    "motorcycle": "motorcycle motorbike",
    "boat": "boat sailboat ship yacht canoe kayak ferry rowboat dinghy gondola",
    "airplane": "airplane plane aeroplane aircraft airliner",         # not "jet": jet black
    "chair": "chair armchair stool",
    "sofa": "sofa couch",
    "shelf": "shelf shelves bookshelf bookcase",
    "cup": "cup mug teacup",
    "burger": "burger hamburger cheeseburger",
    "donut": "donut doughnut",
    "phone": "phone smartphone telephone",
    "television": "television tv",
    "bag": "bag handbag purse",
    "hat": "hat cap",
    "coat": "coat jacket raincoat",
    "shoe": "shoe sneaker",
    "tree": "tree oak pine birch willow fir",
    "flower": "flower tulip daisy sunflower lily orchid lotus",
    "mountain": "mountain hill",                                      # not "peak": peak brightness
    "sea": "sea ocean",
    "house": "house cottage cabin hut",
}
# one-word groups ("couple", "peak", "jet", "seal" are out: "a couple of stops", "jet black")
_SINGLE = (
    "goat elephant zebra giraffe bear lion tiger cheetah monkey gorilla deer fox wolf wolves squirrel "
    "hamster mouse mice rat fish goldfish shark whale dolphin otter crab lobster octopus snake lizard "
    "frog turtle tortoise camel kangaroo koala panda raccoon hedgehog llama alpaca donkey buffalo bison "
    "moose hippo rhino crocodile alligator jellyfish snail butterfly moth ladybug dragonfly spider ant "
    "van bus helicopter tractor skateboard surfboard ski sled wagon cart carriage stroller wheelchair "
    "bench table desk bed cabinet cupboard dresser lamp vase mirror clock rug carpet curtain pillow "
    "cushion blanket fireplace bottle jar bowl plate fork knife knives spoon chopstick kettle teapot pan "
    "pizza cake cupcake sandwich hotdog banana apple pear strawberry grape watermelon pineapple tomato "
    "carrot broccoli croissant bread cookie pie egg cheese sushi noodle salad steak pancake "
    "book laptop computer keyboard camera umbrella backpack suitcase kite frisbee ball balloon guitar "
    "violin piano drum candle flag basket toy doll robot trophy helmet shirt dress skirt sweater scarf "
    "boot glove sunglass necklace bracelet "
    "building skyscraper church cathedral temple castle palace tower bridge lighthouse barn windmill "
    "fence gate statue fountain tent shed garage chimney staircase pier dock "
    "lake river waterfall beach forest island volcano cactus mushroom rainbow snowman"
)


def _build() -> dict[str, str]:
    out: dict[str, str] = {}
    for group, words in _GROUPS.items():
        for w in words.split():
            out[normalise_word(w)] = group
    for w in _SINGLE.split():
        out.setdefault(normalise_word(w), normalise_word(w))
    return out


GROUP_OF: dict[str, str] = _build()     # normalised word -> its group


def absent_objects(instruction: str, caption: str) -> list[str]:
    """Object words of the instruction (as written, normalised) whose group nothing in the caption
    belongs to, in order of appearance, each once."""
    present = {GROUP_OF[w] for w in normalise_words(caption) if w in GROUP_OF}
    out: list[str] = []
    for w in normalise_words(instruction):
        g = GROUP_OF.get(w)
        if g is not None and g not in present and w not in out:
            out.append(w)
    return out
