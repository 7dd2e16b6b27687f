"""Pictures of what a pretraining run learned: matched tokens, similarity maps, PCA colours (PNG).

    python launch/visualize.py --checkpoint=runs/demo --image=runs/demo/phantoms/ct_0008.nii.gz --out=runs/demo/viz
    python launch/visualize.py --checkpoint=runs/demo --datalist=runs/demo/phantoms/datalist.json --index=0 --out=DIR

--checkpoint is a pretraining workdir (or one of its step folders; --step picks a step, default
the latest); its config.json gives the model, the modality preset and the views. The volume is
read through the project's reader and preset, and fixed view --view of it (seeded by --seed and
--index, as the held-out evaluation's) gives src and aug_full. Writes correspondence.png (top-1
matches, green right / red wrong against the exact ground truth, accuracy in the titles: patch
head, last stage, the stage before), similarity.png (one token's cosine against every token of
the other view), pca.png (3 principal components of the tokens as RGB) and summary.json.
Needs matplotlib: pip install -e ".[viz]".
"""
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without installing

from absl import app, flags, logging  # noqa: E402

_CHECKPOINT = flags.DEFINE_string("checkpoint", None, "Pretraining workdir or step folder.")
_STEP = flags.DEFINE_integer("step", None, "Checkpoint step (default: the latest).")
_IMAGE = flags.DEFINE_string("image", None, "A NIfTI volume (.nii / .nii.gz).")
_DATALIST = flags.DEFINE_string("datalist", None, "A datalist JSON; with --index, instead of --image.")
_SPLIT = flags.DEFINE_string("split", "", "The datalist's list ('' = 'validation' if it has one, else 'training').")
_INDEX = flags.DEFINE_integer("index", 0, "Entry of the datalist's list; also seeds the fixed view.")
_VIEW = flags.DEFINE_integer("view", 0, "Which fixed view of the volume (as the evaluation's eval.views_per_volume).")
_SEED = flags.DEFINE_integer("seed", None, "Seed of the fixed view (default: the run's eval.seed, else 0).")
_VOXEL = flags.DEFINE_list("voxel", None, "x,y,z of the token of the similarity map (default: the ROI centre).")
_LEVELS = flags.DEFINE_list("levels", "head,last,finer", "Token levels drawn: head (patch head), last (encoder "
                            "last stage), finer (the stage before).")
_DPI = flags.DEFINE_integer("dpi", 100, "Resolution of the PNGs.")
_OUT = flags.DEFINE_string("out", None, "Output folder for the PNGs and summary.json.")

SCRIPT = "visualize.py"


def fail(msg: str, code: int = 2):
    print(f"{SCRIPT}: error: {msg}", file=sys.stderr)
    sys.exit(code)


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {argv[1:]}")
    logging.set_verbosity(logging.ERROR)  # Orbax warns about the data item it is told not to read
    from s2dc_jax.tasks import visualize

    for name, flag in (("checkpoint", _CHECKPOINT), ("out", _OUT)):
        if not flag.value:
            fail(f"--{name} is required (python launch/visualize.py --help)")
    if not visualize.have_matplotlib():
        fail(visualize.MISSING)
    if bool(_IMAGE.value) == bool(_DATALIST.value):
        fail("give exactly one of --image=VOLUME.nii.gz or --datalist=LIST.json [--index=i]")
    from s2dc_jax.data.io import DataError

    try:
        paths = visualize.run_visualize(_CHECKPOINT.value, _OUT.value, step=_STEP.value, image=_IMAGE.value,
                                        datalist=_DATALIST.value, split=_SPLIT.value, index=_INDEX.value,
                                        view=_VIEW.value, seed=_SEED.value,
                                        voxel=tuple(int(v) for v in _VOXEL.value) if _VOXEL.value else None,
                                        levels=tuple(_LEVELS.value), dpi=_DPI.value)
    except (ValueError, FileNotFoundError, DataError) as e:
        fail(str(e))
    for name, acc in paths.pop("accuracy").items():
        print(f"{name}: {acc['right']}/{acc['pairs']} ground-truth pairs matched, accuracy {acc['accuracy']:.3f}")
    for p in paths.values():
        print(f"wrote {p}")


if __name__ == "__main__":
    app.run(main)
