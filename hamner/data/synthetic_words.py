"""Word lists of the synthetic tasks (our own): nouns, names, activities and propositions.

Every entry is plain lowercase/capitalised ASCII letters and spaces, so that a word with its leading
space is whole pre-tokens for byte-level BPE tokenizers; the generator relies on that (see data/synthetic.py).
"""
from __future__ import annotations

NOUNS: tuple[str, ...] = tuple("""
apple ball basket bell bench berry bird blanket boat book boot bottle bowl box branch bread brick bridge
broom brush bucket button cake candle cap card carpet carrot castle cat chair chalk cheese cherry clock
cloud coat coin comb cookie corn cow crayon crown cup curtain desk dish dog doll door dragon drum duck
egg fence fern flag flower fork forest fox frog garden gate glove goat grape grass hammer hat hill honey
horse house jar jacket kettle key kite knight ladder lamp leaf lemon lion map melon mirror mitten moon
mouse mug nest net nut onion orange owl pan panda paper peach pear pen pencil pepper piano pig pillow
plate plum pond pot pumpkin puppet queen rabbit radio rain ribbon rice ring river robot rock rope rose
salt sand scarf seed sheep shell ship shoe sock sofa spoon star stick stone straw sun swing table teapot
tent tiger toast towel tower toy train tree truck tulip turtle umbrella vase wagon wall watch whale
wheel window wolf wool yarn zebra
""".split())

NAMES: tuple[str, ...] = tuple("""
Ada Alma Amos Anna Arlo Ben Bella Carl Carol Cleo Dana Dexter Dora Eli Ella Emil Enzo Eva Felix Fiona
Freya Gabe Greta Hana Hugo Ida Ines Ivan Jack Jade Jonas Juno Kai Kira Lars Lena Leo Lila Luca Luna
Mara Max Mila Milo Nadia Nell Nico Nina Noah Nora Omar Otto Pablo Pia Quinn Rosa Ruben Ruth Sam Sara
Seth Sofia Tara Theo Tim Uma Vera Victor Wade Willa Xander Yara Yusuf Zara Zoe
""".split())

# (third person singular, base form, object): each pair appears once so that "Who ...?" has one answer.
ACTIVITIES: tuple[tuple[str, str, str], ...] = (
    ("drinks", "drink", "coffee"), ("drinks", "drink", "tea"), ("drinks", "drink", "milk"),
    ("drinks", "drink", "juice"), ("drinks", "drink", "cocoa"), ("reads", "read", "novels"),
    ("reads", "read", "comics"), ("reads", "read", "poems"), ("reads", "read", "maps"),
    ("reads", "read", "letters"), ("plays", "play", "chess"), ("plays", "play", "football"),
    ("plays", "play", "tennis"), ("plays", "play", "cards"), ("plays", "play", "drums"),
    ("plays", "play", "violin"), ("eats", "eat", "apples"), ("eats", "eat", "soup"),
    ("eats", "eat", "noodles"), ("eats", "eat", "pancakes"), ("eats", "eat", "carrots"),
    ("eats", "eat", "cherries"), ("paints", "paint", "flowers"), ("paints", "paint", "boats"),
    ("paints", "paint", "portraits"), ("paints", "paint", "fences"), ("grows", "grow", "tomatoes"),
    ("grows", "grow", "roses"), ("grows", "grow", "beans"), ("grows", "grow", "herbs"),
    ("collects", "collect", "stamps"), ("collects", "collect", "shells"), ("collects", "collect", "coins"),
    ("collects", "collect", "rocks"), ("bakes", "bake", "bread"), ("bakes", "bake", "cookies"),
    ("bakes", "bake", "pies"), ("builds", "build", "kites"), ("builds", "build", "robots"),
    ("builds", "build", "sandcastles"), ("sings", "sing", "songs"), ("sings", "sing", "lullabies"),
    ("writes", "write", "stories"), ("writes", "write", "songs"), ("writes", "write", "poems"),
    ("feeds", "feed", "ducks"), ("feeds", "feed", "cats"), ("feeds", "feed", "horses"),
    ("rides", "ride", "bikes"), ("rides", "ride", "horses"), ("watches", "watch", "birds"),
    ("watches", "watch", "movies"), ("watches", "watch", "stars"), ("fixes", "fix", "clocks"),
    ("fixes", "fix", "cars"), ("knits", "knit", "scarves"), ("knits", "knit", "socks"),
    ("climbs", "climb", "trees"), ("climbs", "climb", "mountains"), ("cooks", "cook", "rice"),
)

# Propositions for the logic task, written lowercase; the sentence-initial form capitalises the first letter.
PROPOSITIONS: tuple[str, ...] = (
    "it rains", "the ground is wet", "the sun shines", "the grass grows", "the wind blows",
    "the kite flies", "the bell rings", "the door opens", "the dog barks", "the cat wakes up",
    "the lamp is on", "the room is bright", "the river rises", "the bridge closes", "the snow falls",
    "the road is icy", "the baker bakes bread", "the shop smells sweet", "the baby sleeps",
    "the house is quiet", "the kettle boils", "the tea is ready", "the bus is late", "the children walk",
    "the moon is full", "the owls hoot", "the gate is locked", "the sheep stay in", "the oven is hot",
    "the cake rises", "the clock strikes noon", "the farmer eats lunch", "the tide comes in",
    "the boats float", "the music plays", "the people dance", "the leaves fall", "the park is golden",
    "the milk is cold", "the butter is hard", "the train arrives", "the station is busy",
    "the window is open", "the birds sing", "the fire is lit", "the cabin is warm",
)
