"""Open a mesh.glb (or .obj) in Blender the way a user would and render it; prints what it found.

Run (not part of pytest; needs Blender >= 3.4):
    blender -b --factory-startup --python sds3d/bench/viewer_check/blender_check.py -- RUN/mesh.glb out.png [eevee|cycles|workbench]

Checks: one mesh imported, its material is a Principled BSDF with metallic 0, the colour comes
from the vertex colours (a Color Attribute / Vertex Color node feeding Base Color) or from an
image texture, the mesh has custom (imported) normals; then renders one PNG from the front-left
with a sun + sky-grey world, the object framed, Filmic off (Standard view transform) so colours
are comparable to turntable.mp4.
"""

import math
import sys

import bpy
import numpy as np
from mathutils import Vector

if not hasattr(np, "bool"):  # Debian's Blender 3.4 glTF add-on uses np.bool, gone in numpy >= 1.24
    np.bool = bool  # type: ignore[attr-defined]

argv = sys.argv[sys.argv.index("--") + 1 :]
path, out = argv[0], argv[1]
engine = (argv[2] if len(argv) > 2 else "eevee").lower()

bpy.ops.wm.read_factory_settings(use_empty=True)
if path.lower().endswith(".obj"):
    bpy.ops.wm.obj_import(filepath=path)
else:
    bpy.ops.import_scene.gltf(filepath=path)
meshes = [o for o in bpy.context.scene.objects if o.type == "MESH"]
print(f"CHECK imported mesh objects: {len(meshes)}")
for ob in meshes:
    me = ob.data
    print(f"CHECK {ob.name}: {len(me.vertices)} vertices, {len(me.polygons)} faces, color attributes "
          f"{[a.name + ':' + a.domain + ':' + a.data_type for a in me.color_attributes]}, custom normals {me.has_custom_normals}")
    for slot in ob.material_slots:
        mat = slot.material
        if mat is None or not mat.use_nodes:
            print("CHECK material: none (the mesh renders grey)")
            continue
        bsdf = next((n for n in mat.node_tree.nodes if n.type == "BSDF_PRINCIPLED"), None)
        links = bsdf.inputs["Base Color"].links if bsdf else []
        feeders, stack = [], [l.from_node for l in links]
        while stack:  # walk back from Base Color through mix / multiply nodes
            node = stack.pop()
            feeders.append(node.type)
            stack += [l.from_node for i in node.inputs for l in i.links]
        print(f"CHECK material {mat.name}: metallic {bsdf.inputs['Metallic'].default_value:.3f}, roughness "
              f"{bsdf.inputs['Roughness'].default_value:.3f}, base colour {tuple(round(v, 3) for v in bsdf.inputs['Base Color'].default_value)}, "
              f"fed by {feeders}")

# frame the object(s): camera on the front-left, looking at the bounding-box centre (glTF +y up = Blender +z)
corners = [ob.matrix_world @ Vector(c) for ob in meshes for c in ob.bound_box]
lo = Vector([min(c[i] for c in corners) for i in range(3)])
hi = Vector([max(c[i] for c in corners) for i in range(3)])
centre, size = (lo + hi) / 2, max((hi - lo).length, 1e-3)
scene = bpy.context.scene
cam = bpy.data.objects.new("cam", bpy.data.cameras.new("cam"))
scene.collection.objects.link(cam)
# our front (+x) is glTF +z, which Blender's importer turns into -y: look at the front, slightly from above
direction = Vector((0.5, -1.0, 0.45)).normalized()
cam.location = centre + direction * size * 1.6
cam.rotation_euler = (centre - cam.location).to_track_quat("-Z", "Y").to_euler()
cam.data.lens = 50
scene.camera = cam
sun = bpy.data.objects.new("sun", bpy.data.lights.new("sun", "SUN"))
sun.data.energy = 3.0
sun.rotation_euler = (math.radians(40), 0, math.radians(30))
scene.collection.objects.link(sun)
world = bpy.data.worlds.new("world")
world.use_nodes = True
world.node_tree.nodes["Background"].inputs["Color"].default_value = (0.6, 0.6, 0.6, 1)
scene.world = world
scene.view_settings.view_transform = "Standard"
scene.render.resolution_x = scene.render.resolution_y = 512
scene.render.engine = {"eevee": "BLENDER_EEVEE", "cycles": "CYCLES", "workbench": "BLENDER_WORKBENCH"}[engine]
if engine == "cycles":
    scene.cycles.samples = 16
    scene.cycles.device = "CPU"
if engine == "workbench":
    scene.display.shading.color_type = "VERTEX" if meshes and meshes[0].data.color_attributes else "TEXTURE"
scene.render.filepath = out
bpy.ops.render.render(write_still=True)
print(f"CHECK rendered {out} with {scene.render.engine}")
