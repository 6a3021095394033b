"""Registering the package's trainers with nnU-Net: its ``-tr`` lookup also scans the folders listed in
``nnUNet_extTrainer`` (``nnunetv2/utilities/find_objects.py``).

Each part of the package whose classes nnU-Net must find by name keeps them in a folder named
:data:`FOLDER_NAME` (``nnunet_ext``): the trainers (:mod:`nnunet_blob.trainers`) and the demo's ``<trainer>_demo``
classes (:mod:`nnunet_blob.demo`, so that a model the demo trained is found from any shell). :data:`TRAINER_FOLDERS`
are these folders. The start-up hook (``nnunet_blob.pth``, :mod:`nnunet_blob._autoregister`) lists them in every
Python process, so this module is imported at interpreter start-up: it imports nothing but ``os`` there. Listing a
folder imports nothing: nnU-Net imports its modules only when a ``-tr`` name is not one of its own.
"""
import os

#: nnU-Net's variable listing folders of external trainers (``os.pathsep``-separated)
EXT_TRAINER_VARIABLE = "nnUNet_extTrainer"
#: the name of a part's folder of modules for nnU-Net's ``-tr`` lookup
FOLDER_NAME = "nnunet_ext"
_PACKAGE = os.path.dirname(os.path.abspath(__file__))


def _trainer_folders() -> tuple[str, ...]:
    try:
        parts = sorted(os.listdir(_PACKAGE), key=lambda part: (part != "trainers", part))
    except OSError:
        return ()
    return tuple(folder for folder in (os.path.join(_PACKAGE, part, FOLDER_NAME) for part in parts)
                 if os.path.isdir(folder))


#: every part's folder of :data:`FOLDER_NAME`: the trainers' first (nnU-Net's lookup imports the folders' modules in
#: this order until it finds the name), then the others' in the order of the parts' names
TRAINER_FOLDERS = _trainer_folders()


def ext_trainer_value(environ=os.environ, folders=TRAINER_FOLDERS) -> str:
    """``nnUNet_extTrainer`` of ``environ`` with ``folders`` (one path or several) listed: each appended after the
    folders already listed (the user's come first and stay), unless it is there already."""
    if isinstance(folders, (str, os.PathLike)):
        folders = (folders,)
    current = [p for p in environ.get(EXT_TRAINER_VARIABLE, "").split(os.pathsep) if p]
    return os.pathsep.join(current + [f for f in dict.fromkeys(map(os.fspath, folders)) if f not in current])


def register_trainer_folders(environ=os.environ) -> str:
    """List :data:`TRAINER_FOLDERS` in ``environ['nnUNet_extTrainer']`` (once, keeping the user's folders);
    returns the new value."""
    environ[EXT_TRAINER_VARIABLE] = ext_trainer_value(environ)
    return environ[EXT_TRAINER_VARIABLE]


def is_registered(environ=os.environ) -> bool:
    """Whether ``environ['nnUNet_extTrainer']`` lists every folder of :data:`TRAINER_FOLDERS`."""
    listed = environ.get(EXT_TRAINER_VARIABLE, "").split(os.pathsep)
    return all(folder in listed for folder in TRAINER_FOLDERS)


def export_line(environ=os.environ) -> str:
    """The shell line ``nnunet_blob trainers --export`` prints: registers our folders in a shell where the start-up
    hook cannot run (``eval "$(nnunet_blob trainers --export)"``)."""
    import shlex  # not at start-up

    return f"export {EXT_TRAINER_VARIABLE}={shlex.quote(ext_trainer_value(environ))}"
