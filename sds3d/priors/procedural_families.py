"""The procedural exemplar families: each a function ``(rng) -> (noun, colour name, parts)``.

Every family draws its proportions, colours and optional parts from ``rng`` (a
``numpy.random.Generator``), in our axes (+z up, front toward +x, ground at z = 0). What
each covers (the failure modes of text-to-3D that the test split has to measure):

=========  ==============================================================  ==================
family     parts                                                           covers
=========  ==============================================================  ==================
chair      seat, 4 thin legs, backrest (panel or slats) at the back         thin, front/back
table      top, 4 thin legs, optional stretchers, an object on top         thin, flat
mug        hollow body, thin ring handle at the side, logo at the front    thin, concave, front
bowl       hollow lathe, foot ring, 0-3 fruit inside                       concave
goblet     hollow cup on a thin stem and a foot                            thin, concave, tall
bottle     lathe body with neck, cap, label at the front                   tall, front
lamp       base, thin tall pole, open shade, bulb, switch at the front     thin, tall
tower      2-4 tiers, roof, door and windows at the front, flag on a pole  tall, front
rocket     body, nose cone, 3-4 flat fins, porthole at the front, nozzle   tall, flat, front
flower     pot, thin stem, flat leaves, petals facing the front            thin, flat, front
car        body, cabin, 4 wheels on 2 thin axles, head/tail lights         thin, front/back
dog        body, head at the front, 4 legs, ears, thin tail at the back    front/back
bust       plinth, neck, head with face at the front, hair at the back     front/back
sign       thin post on a base, flat panel, symbol on the front only       thin, flat, front
=========  ==============================================================  ==================
"""

from __future__ import annotations

from typing import Callable

import numpy as np

from sds3d.priors.procedural_shapes import (
    PALETTE, Part, box, cname, colour, cone, cyl, lathe, other_colour, rod, rotated, shell, sphere, torus, u,
)  # fmt: skip

Family = Callable[[np.random.Generator], tuple[str, list[Part]]]
"""``rng -> (prompt, parts)``: the prompt names the object's colours and parts as a user would."""
WOODS = ("brown", "orange", "black", "white", "grey")
def article(word: str) -> str:
    return "an" if word[0] in "aeiou" else "a"


SKIN = ((240, 200, 170), (200, 150, 110), (140, 95, 60), (90, 60, 40))
SKIN_WORDS = ("pale", "tan", "brown", "dark brown")


def chair(rng: np.random.Generator) -> tuple[str, list[Part]]:
    name, wood = colour(rng, WOODS)
    w, d, h, t = u(rng, 0.7, 1.0), u(rng, 0.7, 1.0), u(rng, 0.7, 1.0), u(rng, 0.045, 0.075)
    parts = [Part(f"leg{i}", box(t, t, h, (x * (d / 2 - t), y * (w / 2 - t), h / 2)), wood, "thin")
             for i, (x, y) in enumerate(((-1, -1), (-1, 1), (1, -1), (1, 1)))]  # fmt: skip
    parts.append(Part("seat", box(d, w, 0.07, (0, 0, h + 0.035)), wood))
    if rng.random() < 0.7:
        parts.append(Part("cushion", box(d * 0.85, w * 0.85, 0.06, (0.02, 0, h + 0.1)), other_colour(rng, name)))
    back_h, bx = u(rng, 0.6, 1.0), -d / 2 + t / 2
    if rng.random() < 0.5:
        parts.append(Part("backrest", box(t, w, back_h, (bx, 0, h + 0.07 + back_h / 2)), wood))
    else:
        n = int(rng.integers(3, 6))
        for i, y in enumerate(np.linspace(-w / 2 + t / 2, w / 2 - t / 2, n)):
            parts.append(Part(f"slat{i}", box(t, t, back_h, (bx, y, h + 0.07 + back_h / 2)), wood, "thin"))
        parts.append(Part("top rail", box(t * 1.2, w, 0.1, (bx, 0, h + 0.07 + back_h)), wood))
    cushion = next((f" and a {cname(p.rgb)} cushion" for p in parts if p.name == "cushion"), "")
    back = "a solid back" if any(p.name == "backrest" for p in parts) else f"a back of {n} slats"
    return f"{article(name)} {name} wooden chair with four thin legs, {back}{cushion}", parts


def table(rng: np.random.Generator) -> tuple[str, list[Part]]:
    name, wood = colour(rng, WOODS)
    w, d, h, r = u(rng, 1.2, 1.8), u(rng, 0.7, 1.1), u(rng, 0.6, 0.85), u(rng, 0.025, 0.04)
    top = u(rng, 0.04, 0.07)
    parts = [Part("top", box(d, w, top, (0, 0, h + top / 2)), wood, "flat")]
    corners = [(x * (d / 2 - 2 * r), y * (w / 2 - 2 * r)) for x in (-1, 1) for y in (-1, 1)]
    parts += [Part(f"leg{i}", rod((x, y, 0), (x, y, h), r), wood, "thin") for i, (x, y) in enumerate(corners)]
    if rng.random() < 0.5:
        z = h * 0.25
        for i, x in enumerate((-1, 1)):
            xe = x * (d / 2 - 2 * r)
            parts.append(Part(f"stretcher{i}", rod((xe, -w / 2 + 2 * r, z), (xe, w / 2 - 2 * r, z), r * 0.7), wood, "thin"))
    thing = other_colour(rng, name)
    if rng.random() < 0.5:
        parts.append(Part("vase", cyl(0.08, 0.3, (u(rng, -0.1, 0.1), u(rng, -0.3, 0.3), h + top + 0.15)), thing))
    else:
        parts.append(Part("book", box(0.25, 0.35, 0.06, (u(rng, -0.1, 0.1), u(rng, -0.3, 0.3), h + top + 0.03)), thing))
    bars = " joined by stretchers" if any(p.name.startswith("stretcher") for p in parts) else ""
    return f"{article(name)} {name} table on four thin legs{bars}, with {article(cname(thing))} {cname(thing)} {parts[-1].name} on top", parts


def mug(rng: np.random.Generator) -> tuple[str, list[Part]]:
    name, body = colour(rng)
    R, H, wall = u(rng, 0.35, 0.5), u(rng, 0.7, 1.1), u(rng, 0.04, 0.06)
    parts = [Part("body", shell([(0, 0), (R, 0), (R, H)], wall), body)]
    if rng.random() < 0.6:
        parts.append(Part("coffee", cyl(R - wall - 0.005, 0.02, (0, 0, H * u(rng, 0.6, 0.85))), (70, 40, 25)))
    major, minor = u(rng, 0.16, 0.24) * H / 0.9, u(rng, 0.025, 0.04)
    parts.append(Part("handle", torus(major, minor, (0, R, H * 0.5), normal="x"), body, "thin"))
    logo = other_colour(rng, name)
    parts.append(Part("logo", cyl(R * u(rng, 0.3, 0.45), 0.03, (R, 0, H * 0.5), axis="x"), logo, "flat"))
    if rng.random() < 0.5:
        parts.append(Part("stripe", cyl(R + 0.01, H * 0.1, (0, 0, H * 0.85)), other_colour(rng, name)))
    extra = "".join(f", {article(cname(p.rgb))} {cname(p.rgb)} stripe" for p in parts if p.name == "stripe")
    full = " full of coffee" if any(p.name == "coffee" for p in parts) else ""
    return f"{article(name)} {name} mug{full} with a ring handle, {article(cname(logo))} {cname(logo)} round logo on the front{extra}", parts


def bowl(rng: np.random.Generator) -> tuple[str, list[Part]]:
    name, outside = colour(rng)
    R, D, wall = u(rng, 0.6, 0.9), u(rng, 0.3, 0.55), u(rng, 0.04, 0.06)
    foot = u(rng, 0.3, 0.5) * R
    arc = [(foot + (R - foot) * np.sin(a), D * (1 - np.cos(a))) for a in np.linspace(0, np.pi / 2, 8)]
    parts = [Part("bowl", shell([(0.0, 0.0)] + arc, wall, (0, 0, 0.06)), outside)]
    parts.append(Part("inside", shell([(0.0, 0.0)] + [(r - wall, z) for r, z in arc[:-1]], 0.01, (0, 0, 0.06 + wall)),
                      other_colour(rng, name)))  # fmt: skip
    parts.append(Part("foot", torus(foot, 0.035, (0, 0, 0.04)), outside))
    for i in range(int(rng.integers(0, 4))):
        a, rr = u(rng, 0, 2 * np.pi), u(rng, 0.0, 0.5) * R
        parts.append(Part(f"fruit{i}", sphere(0.14, (rr * np.cos(a), rr * np.sin(a), 0.06 + wall + 0.14 + 0.05)),
                          colour(rng, ("red", "orange", "yellow", "green"))[1]))  # fmt: skip
    fruit = [p for p in parts if p.name.startswith("fruit")]
    inside = f"{article(name)} {name} bowl, {cname(parts[1].rgb)} inside, on a foot ring"
    if fruit:
        kinds = sorted({cname(p.rgb) for p in fruit})
        inside += f", holding {len(fruit)} {' and '.join(kinds)} {'fruit' if len(fruit) == 1 else 'fruits'}"
    return inside + ("" if fruit else ", empty"), parts


def goblet(rng: np.random.Generator) -> tuple[str, list[Part]]:
    name, glass = colour(rng)
    stem_h, stem_r, foot_r = u(rng, 0.5, 0.9), u(rng, 0.022, 0.035), u(rng, 0.25, 0.4)
    R, H = u(rng, 0.3, 0.45), u(rng, 0.4, 0.6)
    cup = [(0.0, 0.0), (R * 0.3, 0.0), (R * 0.9, H * 0.35), (R, H)]
    parts = [Part("foot", cyl(foot_r, 0.04, (0, 0, 0.02)), glass, "flat"),
             Part("stem", rod((0, 0, 0.04), (0, 0, 0.04 + stem_h), stem_r), glass, "thin"),
             Part("cup", shell(cup, 0.035, (0, 0, 0.04 + stem_h)), glass)]  # fmt: skip
    if rng.random() < 0.6:
        parts.append(Part("wine", cyl(R * 0.75, 0.02, (0, 0, 0.04 + stem_h + H * 0.5)), other_colour(rng, name)))
    parts.append(Part("knot", sphere(stem_r * 2.2, (0, 0, 0.04 + stem_h * 0.5)), other_colour(rng, name)))
    wine = "".join(f", filled with {cname(p.rgb)} wine" for p in parts if p.name == "wine")
    return f"{article(name)} {name} goblet on a thin stem with {article(cname(parts[-1].rgb))} {cname(parts[-1].rgb)} knot{wine}", parts


def bottle(rng: np.random.Generator) -> tuple[str, list[Part]]:
    name, glass = colour(rng, ("green", "teal", "blue", "brown", "white", "purple"))
    r, h, nr, nh = u(rng, 0.22, 0.35), u(rng, 0.9, 1.4), u(rng, 0.07, 0.11), u(rng, 0.25, 0.45)
    sh = u(rng, 0.15, 0.3)
    body = [(0.0, 0.0), (r, 0.0), (r, h), (nr, h + sh), (nr, h + sh + nh), (0.0, h + sh + nh)]
    parts = [Part("body", lathe(body), glass), Part("cap", cyl(nr * 1.15, 0.1, (0, 0, h + sh + nh + 0.04)),
                                                     other_colour(rng, name))]  # fmt: skip
    label = other_colour(rng, name)
    parts.append(Part("label", box(0.03, r * 1.3, h * u(rng, 0.3, 0.5), (r, 0, h * 0.45)), label, "flat"))
    if rng.random() < 0.5:
        parts.append(Part("band", cyl(r * 1.02, h * 0.06, (0, 0, h * 0.12)), label))
    band = ", and a band near the bottom" if any(p.name == "band" for p in parts) else ""
    return (f"{article(name)} {name} glass bottle with {article(cname(parts[1].rgb))} {cname(parts[1].rgb)} cap and "
            f"{article(cname(label))} {cname(label)} label on the front{band}"), parts


def lamp(rng: np.random.Generator) -> tuple[str, list[Part]]:
    name, metal = colour(rng, ("black", "grey", "white", "brown"))
    pole_h, pole_r, base_r = u(rng, 1.2, 1.8), u(rng, 0.025, 0.04), u(rng, 0.25, 0.4)
    shade_lo, shade_hi, shade_h = u(rng, 0.3, 0.45), u(rng, 0.15, 0.25), u(rng, 0.35, 0.5)
    top = 0.05 + pole_h
    shade_colour = other_colour(rng, name)
    parts = [Part("base", cyl(base_r, 0.05, (0, 0, 0.025)), metal, "flat"),
             Part("pole", rod((0, 0, 0.05), (0, 0, top), pole_r), metal, "thin"),
             Part("shade", lathe([(shade_lo, 0.0), (shade_hi, shade_h)], (0, 0, top - shade_h * 0.6)), shade_colour),
             Part("bulb", sphere(0.09, (0, 0, top - shade_h * 0.35)), (250, 240, 170)),
             Part("switch", box(0.06, 0.08, 0.05, (base_r * 0.65, 0, 0.07)), other_colour(rng, name))]  # fmt: skip
    return f"{article(name)} {name} floor lamp with a thin pole and {article(cname(shade_colour))} {cname(shade_colour)} shade", parts


def tower(rng: np.random.Generator) -> tuple[str, list[Part]]:
    name, stone = colour(rng, ("grey", "white", "brown", "orange", "yellow"))
    tiers, width, z, parts = int(rng.integers(2, 5)), u(rng, 0.5, 0.7), 0.0, []
    round_ = rng.random() < 0.5
    for i in range(tiers):
        th = u(rng, 0.5, 0.8)
        part = cyl(width / 2, th, (0, 0, z + th / 2)) if round_ else box(width, width, th, (0, 0, z + th / 2))
        parts.append(Part(f"tier{i}", part, stone))
        parts.append(Part(f"window{i}", box(0.03, width * 0.2, th * 0.3, (width / 2, 0, z + th * 0.55)), (40, 60, 110)))
        z, width = z + th, width * u(rng, 0.75, 0.9)
    roof = other_colour(rng, name)
    parts.append(Part("roof", cone(width * 0.7, u(rng, 0.4, 0.7), (0, 0, z)), roof))
    parts.append(Part("door", box(0.03, 0.18, 0.3, (parts[0].mesh.bounds[1][0], 0, 0.15)), (100, 55, 25)))
    flag_z = float(parts[-2].mesh.bounds[1][2])
    parts.append(Part("flagpole", rod((0, 0, flag_z - 0.05), (0, 0, flag_z + 0.35), 0.02), (60, 60, 60), "thin"))
    parts.append(Part("flag", box(0.015, 0.2, 0.12, (0, 0.11, flag_z + 0.28)), other_colour(rng, name), "flat"))
    shape = "round" if round_ else "square"
    return (f"{article(name)} {name} {shape} tower of {tiers} tiers with {article(cname(roof))} {cname(roof)} cone roof, "
            f"a door at the front and a flag on top"), parts


def rocket(rng: np.random.Generator) -> tuple[str, list[Part]]:
    name, hull = colour(rng, ("white", "grey", "red", "blue", "yellow"))
    r, h, nose = u(rng, 0.18, 0.28), u(rng, 1.2, 1.8), u(rng, 0.35, 0.6)
    accent = other_colour(rng, name)
    parts = [Part("body", cyl(r, h, (0, 0, 0.15 + h / 2)), hull), Part("nose", cone(r, nose, (0, 0, 0.15 + h)), accent),
             Part("nozzle", cone(r * 0.7, 0.2, (0, 0, 0.15), axis="z"), (60, 60, 60))]  # fmt: skip
    n_fins, fin = int(rng.integers(3, 5)), u(rng, 0.25, 0.4)
    for i in range(n_fins):
        f = box(fin, 0.03, fin * 1.2, (r + fin / 2 - 0.02, 0, 0.15 + fin * 0.6))
        parts.append(Part(f"fin{i}", rotated(f, 45 + 360 * i / n_fins, (0, 0, 1)), accent, "flat"))
    pz = 0.15 + h * u(rng, 0.6, 0.75)
    parts.append(Part("porthole", cyl(r * 0.45, 0.04, (r, 0, pz), axis="x"), (90, 170, 230), "flat"))
    parts.append(Part("rim", torus(r * 0.45, 0.025, (r + 0.01, 0, pz), normal="x"), accent))
    return (f"{article(name)} {name} rocket with {article(cname(accent))} {cname(accent)} nose cone, {n_fins} fins "
            f"and a round porthole at the front"), parts


def flower(rng: np.random.Generator) -> tuple[str, list[Part]]:
    name, petal = colour(rng, ("red", "yellow", "pink", "purple", "orange", "white", "blue"))
    pot_r, pot_h, stem_h = u(rng, 0.2, 0.3), u(rng, 0.25, 0.4), u(rng, 0.8, 1.3)
    pot = other_colour(rng, name, "green")
    green = colour(rng, ("green",))[1]
    lean = u(rng, -0.15, 0.15)
    head = (lean, 0.0, pot_h + stem_h)
    parts = [Part("pot", lathe([(0, 0), (pot_r * 0.75, 0), (pot_r, pot_h), (0, pot_h)]), pot),
             Part("stem", rod((0, 0, pot_h * 0.9), head, u(rng, 0.02, 0.03)), green, "thin")]  # fmt: skip
    for i in range(int(rng.integers(1, 3))):
        z, side = pot_h + stem_h * u(rng, 0.25, 0.55), 1 if i % 2 == 0 else -1
        leaf = sphere(0.16, (0, side * 0.15, z), (0.35, 1.0, 0.12), subdivisions=2)
        parts.append(Part(f"leaf{i}", rotated(leaf, side * 30, (1, 0, 0), (0, 0, z)), green, "flat"))
    n, size = int(rng.integers(5, 9)), u(rng, 0.14, 0.2)
    for i in range(n):
        a = 2 * np.pi * i / n
        centre = (head[0], size * np.cos(a), head[2] + size * np.sin(a))
        p = sphere(size * 0.75, centre, (0.12, 0.55, 1.0), subdivisions=2)
        parts.append(Part(f"petal{i}", rotated(p, np.degrees(a) - 90, (1, 0, 0), centre), petal, "flat"))
    parts.append(Part("centre", sphere(size * 0.5, (head[0] + 0.03, 0, head[2]), (0.5, 1, 1)), other_colour(rng, name)))
    leaves = sum(p.name.startswith("leaf") for p in parts)
    return (f"{article(name)} {name} flower with {n} petals on a thin green stem with {leaves} "
            f"{'leaf' if leaves == 1 else 'leaves'}, in {article(cname(pot))} {cname(pot)} pot"), parts


def car(rng: np.random.Generator) -> tuple[str, list[Part]]:
    name, paint = colour(rng, ("red", "blue", "green", "yellow", "orange", "white", "black", "teal"))
    L, W, H, wr = u(rng, 1.4, 2.0), u(rng, 0.7, 0.9), u(rng, 0.3, 0.45), u(rng, 0.16, 0.22)
    z0 = wr + 0.02
    cab_l, cab_x = L * u(rng, 0.4, 0.55), -L * u(rng, 0.05, 0.15)
    parts = [Part("body", box(L, W, H, (0, 0, z0 + H / 2)), paint),
             Part("cabin", box(cab_l, W * 0.85, H * 0.8, (cab_x, 0, z0 + H * 1.4)), paint),
             Part("windshield", box(0.02, W * 0.75, H * 0.6, (cab_x + cab_l / 2, 0, z0 + H * 1.4)), (60, 90, 120))]  # fmt: skip
    for i, x in enumerate((L * 0.32, -L * 0.32)):
        parts.append(Part(f"axle{i}", rod((x, -W / 2 - 0.08, wr), (x, W / 2 + 0.08, wr), u(rng, 0.02, 0.03)), (90, 90, 90), "thin"))
        for s in (-1, 1):
            parts.append(Part(f"wheel{i}{s}", cyl(wr, 0.1, (x, s * (W / 2 + 0.1), wr), axis="y"), (30, 30, 30)))
            parts.append(Part(f"hub{i}{s}", cyl(wr * 0.45, 0.11, (x, s * (W / 2 + 0.1), wr), axis="y"), (200, 200, 205)))
    for s in (-1, 1):
        parts.append(Part(f"headlight{s}", box(0.03, 0.12, 0.08, (L / 2, s * W * 0.32, z0 + H * 0.6)), (250, 245, 190)))
        parts.append(Part(f"taillight{s}", box(0.03, 0.12, 0.06, (-L / 2, s * W * 0.32, z0 + H * 0.6)), (220, 20, 20)))
    shape = "long" if L > 1.7 else "short"
    cabin = "a big cabin" if cab_l > L * 0.475 else "a small cabin"
    return f"{article(shape)} {shape} {name} car with {cabin}, four black wheels on thin axles and headlights at the front", parts


def dog(rng: np.random.Generator) -> tuple[str, list[Part]]:
    name, fur = colour(rng, ("brown", "black", "white", "grey", "orange", "yellow"))
    L, h, leg_r = u(rng, 0.9, 1.3), u(rng, 0.35, 0.55), u(rng, 0.05, 0.075)
    body_r = u(rng, 0.2, 0.28)
    z = h + body_r * 0.7
    parts = [Part("body", sphere(1.0, (0, 0, z), (L / 2, body_r, body_r)), fur)]
    parts += [Part(f"leg{i}", rod((x * L * 0.32, y * body_r * 0.6, 0), (x * L * 0.32, y * body_r * 0.6, z), leg_r), fur)
              for i, (x, y) in enumerate(((-1, -1), (-1, 1), (1, -1), (1, 1)))]  # fmt: skip
    hr = u(rng, 0.17, 0.24)
    hx, hz = L / 2 + hr * 0.4, z + body_r + hr * 0.6
    patch = other_colour(rng, name)
    parts += [Part("head", sphere(hr, (hx, 0, hz)), fur),
              Part("snout", sphere(hr * 0.55, (hx + hr * 0.9, 0, hz - hr * 0.25), (1.3, 1, 0.8)), patch),
              Part("nose", sphere(hr * 0.18, (hx + hr * 1.6, 0, hz - hr * 0.15)), (20, 20, 20)),
              Part("tail", rod((-L / 2 + 0.05, 0, z + 0.05), (-L / 2 - 0.25, 0, z + u(rng, 0.2, 0.4)), 0.03), fur, "thin")]  # fmt: skip
    for s in (-1, 1):
        parts.append(Part(f"eye{s}", sphere(hr * 0.14, (hx + hr * 0.85, s * hr * 0.4, hz + hr * 0.3)), (20, 20, 20)))
        parts.append(Part(f"ear{s}", sphere(hr * 0.45, (hx - hr * 0.2, s * hr * 0.75, hz + hr * 0.6), (0.5, 0.35, 1.0)), patch, "flat"))
    tall = "long-legged" if h > 0.45 else "short-legged"
    return f"{article(tall)} {tall} {name} dog with {cname(patch)} ears and snout and a thin tail", parts


def bust(rng: np.random.Generator) -> tuple[str, list[Part]]:
    name, hair = colour(rng, ("black", "brown", "yellow", "orange", "grey", "red", "blue"))
    tone = int(rng.integers(len(SKIN)))
    skin = SKIN[tone]
    hr, plinth = u(rng, 0.38, 0.48), u(rng, 0.2, 0.35)
    hz = plinth + 0.3 + hr
    parts = [Part("plinth", box(0.7, 0.7, plinth, (0, 0, plinth / 2)), other_colour(rng, name)),
             Part("neck", cyl(hr * 0.4, 0.45, (0, 0, plinth + 0.2)), skin),
             Part("head", sphere(hr, (0, 0, hz), (0.95, 0.85, 1.15)), skin),
             Part("hair", sphere(hr * 1.04, (-hr * 0.15, 0, hz + hr * 0.2), (0.9, 0.9, 1.0)), hair),
             Part("nose", cone(hr * 0.14, hr * 0.35, (hr * 0.9, 0, hz - hr * 0.05), axis="x"), skin),
             Part("mouth", box(0.03, hr * 0.55, hr * 0.1, (hr * 0.86, 0, hz - hr * 0.45)), (190, 40, 50))]  # fmt: skip
    for s in (-1, 1):
        parts.append(Part(f"eye{s}", sphere(hr * 0.16, (hr * 0.78, s * hr * 0.35, hz + hr * 0.2)), (245, 245, 245)))
        parts.append(Part(f"pupil{s}", sphere(hr * 0.08, (hr * 0.9, s * hr * 0.35, hz + hr * 0.2)), (20, 20, 20)))
        parts.append(Part(f"ear{s}", sphere(hr * 0.2, (0, s * hr * 0.85, hz), (0.6, 0.4, 1.0)), skin))
    return f"a bust of a head with {name} hair and {SKIN_WORDS[tone]} skin on {article(cname(parts[0].rgb))} {cname(parts[0].rgb)} plinth", parts


def sign(rng: np.random.Generator) -> tuple[str, list[Part]]:
    name, face = colour(rng, ("red", "blue", "green", "yellow", "orange", "white"))
    post_h, post_r, size = u(rng, 1.0, 1.5), u(rng, 0.025, 0.04), u(rng, 0.5, 0.8)
    cz, t = post_h + size * 0.45, u(rng, 0.03, 0.05)
    parts = [Part("base", cyl(0.25, 0.06, (0, 0, 0.03)), (90, 90, 90)),
             Part("post", rod((0, 0, 0.06), (0, 0, cz), post_r), (150, 150, 155), "thin")]  # fmt: skip
    round_panel = rng.random() < 0.5
    if round_panel:
        panel = cyl(size / 2, t, (post_r + t / 2, 0, cz), axis="x")
    else:
        panel = box(t, size, size * u(rng, 0.6, 1.0), (post_r + t / 2, 0, cz))
    parts.append(Part("panel", panel, face, "flat"))
    back = PALETTE["grey"]
    parts.append(Part("back", box(0.01, size * 0.3, size * 0.3, (post_r - 0.004, 0, cz)), back, "flat"))
    mark = other_colour(rng, name)
    x = post_r + t + 0.008
    if rng.random() < 0.5:  # an arrow pointing left or right
        s = 1 if rng.random() < 0.5 else -1
        parts.append(Part("arrow shaft", box(0.016, size * 0.45, size * 0.1, (x, -s * size * 0.05, cz)), mark, "flat"))
        head = box(0.016, size * 0.2, size * 0.2, (x, s * size * 0.17, cz))
        parts.append(Part("arrow head", rotated(head, 45, (1, 0, 0), (x, s * size * 0.17, cz)), mark, "flat"))
    else:  # a bar
        parts.append(Part("bar", box(0.016, size * 0.6, size * 0.14, (x, 0, cz)), mark, "flat"))
    shape = "round" if round_panel else "square"
    symbol = "arrow" if any(p.name == "arrow head" for p in parts) else "bar"
    return f"{article(name)} {name} {shape} sign on a thin post with {article(cname(mark))} {cname(mark)} {symbol} on the front", parts


FAMILIES: dict[str, Family] = {
    "chair": chair, "table": table, "mug": mug, "bowl": bowl, "goblet": goblet, "bottle": bottle, "lamp": lamp,
    "tower": tower, "rocket": rocket, "flower": flower, "car": car, "dog": dog, "bust": bust, "sign": sign,
}  # fmt: skip
"""Family name -> generator, in the library's order."""
THIN_FAMILIES = ("chair", "table", "mug", "goblet", "lamp", "flower", "car", "sign")
"""Families whose every object has a thin part (legs, handle, stem, pole, axles, post)."""
TALL_FAMILIES = ("bottle", "lamp", "tower", "rocket")
"""Families whose objects are at least twice as tall as wide."""
