"""The window's commands as data: text, keys, tips and group of each action, and where menus and the toolbar
show them.

The main window gives each command its slot and gets a ``{name: QAction}`` dict back
(:func:`create_actions`); panels put buttons on the same actions (:func:`app.ui.widgets.action_buttons`), so a
command has one text, one shortcut and one enabled state wherever it appears. The keyboard-shortcuts dialog
lists them from here too (:func:`shortcut_rows`), so it is always current, and the panels' ids (:data:`PANELS`).

Every action has a stable id, its Qt ``objectName``: ``cellpol.<group>.<name>`` (:func:`action_id`, e.g.
``cellpol.file.open``, ``cellpol.view3d.reset_3d``), for scripts, tests and saved toolbars; it does not
change when the menu text does.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Mapping, Optional, Sequence, Union

from PySide6 import QtCore, QtGui, QtWidgets

from app.ui.dialogs import native_text

StandardKey = QtGui.QKeySequence.StandardKey
Shortcut = Union[str, QtGui.QKeySequence.StandardKey]


@dataclass(frozen=True)
class ActionSpec:
    """One command of the window.

    Attributes
    ----------
    name : str
        Key in the window's ``actions`` dict (and in the slots it passes to :func:`create_actions`).
    text : str
        Menu text (``&`` marks the mnemonic).
    group : str
        The group the shortcuts dialog lists it under.
    shortcuts : tuple
        Key sequences (strings or standard keys); the first is the one menus show.
    checkable : bool
        A toggle: its slot receives the new state (``toggled``) instead of ``triggered``.
    tip : str
        Tooltip and status-bar tip.
    icon_text : str
        Shorter text for toolbar buttons.
    exclusive : str
        Actions with the same non-empty value form one exclusive :class:`QActionGroup`.
    id_name : str
        The last segment of the stable id when it differs from ``name`` (names are unique across groups, ids
        only within one: ``review_start`` is ``cellpol.review.start``).
    """

    name: str
    text: str
    group: str
    shortcuts: tuple[Shortcut, ...] = ()
    checkable: bool = False
    tip: str = ""
    icon_text: str = ""
    exclusive: str = ""
    id_name: str = ""

    @property
    def id(self) -> str:
        """The stable id (``objectName``) of the action: ``cellpol.<group>.<name>``."""
        return action_id(self.group, self.id_name or self.name)


#: The id segment of each group (``cellpol.<segment>.<name>``).
GROUP_IDS = {"File": "file", "Edit": "edit", "Annotate": "annotate", "View": "view", "Analysis": "analysis",
             "Project": "project", "Review": "review", "3D view": "view3d", "Help": "help"}


def action_id(group: str, name: str) -> str:
    """``cellpol.<group>.<name>``: the group's :data:`GROUP_IDS` segment and the action's name."""
    return f"cellpol.{GROUP_IDS[group]}.{name}"


def _spec(name: str, text: str, group: str, shortcuts: Union[None, Shortcut, Sequence[Shortcut]] = None,
          **options) -> ActionSpec:
    if shortcuts is None:
        keys: tuple[Shortcut, ...] = ()
    elif isinstance(shortcuts, (list, tuple)):
        keys = tuple(shortcuts)
    else:
        keys = (shortcuts,)
    return ActionSpec(name, text, group, keys, **options)


#: Every command of the main window, in the order the shortcuts dialog lists them.
ACTIONS: tuple[ActionSpec, ...] = (
    _spec("open", "&Open image…", "File", StandardKey.Open, icon_text="Open"),
    _spec("open_project", "Open &project…", "File", "Ctrl+Shift+O"),
    _spec("new_project", "&New project…", "File"),
    _spec("demo", "Open &demo volume", "File"),
    _spec("save", "&Save vectors", "File", StandardKey.Save, icon_text="Save"),
    _spec("save_as", "Save vectors &as…", "File", "Ctrl+Shift+S"),
    _spec("import", "&Import vectors…", "File", "Ctrl+I",
          tip="Project CSV, the authors' header-less CSV, or 3DNGMic .npy"),
    _spec("export_legacy", "Authors' annotation CSV…", "File"),
    _spec("export_3dngmic", "3DNGMic vectors .npy…", "File"),
    _spec("predict", "&Predict…", "Analysis", "Ctrl+P",
          tip="Predict the polarity vectors of the open image or of a folder of images with a model"),
    _spec("review", "&Review predictions…", "Analysis", "Ctrl+R",
          tip="Step through the predicted vectors, least confident first: accept, reject or correct them"),
    _spec("evaluate", "&Evaluate prediction sets…", "Analysis", "Ctrl+E",
          tip="Score one or more folders of predictions against ground truth: the paper's six curves against τL"),
    _spec("train", "&Train or fine-tune…", "Analysis",
          tip="Teach a model your microscope: train or fine-tune on the project's annotated and reviewed images"),
    _spec("synthesize", "S&ynthesize training data…", "Analysis",
          tip="Simulated volumes with their vectors, or Vox2Vox volumes learnt from your annotated images"),
    _spec("statistics", "&Statistics…", "Analysis", "Ctrl+T",
          tip="Polarity statistics of the image, the selection or the project by group: directions, Rayleigh and "
              "V-tests, tests between conditions with the image as the unit, figures and export"),
    _spec("reference", "Compare with reference…", "Analysis",
          tip="Score the pairs against reference vectors (ground truth) as the paper does: TPR/FDR/TP/FP/FN at "
              "τL = 0 and 5; the markers are coloured TP/FP and the missed reference pairs drawn as FN"),
    _spec("clear_reference", "Clear comparison", "Analysis"),
    _spec("voxel_size", "Set voxel size…", "File"),
    _spec("next_image", "Next image", "Project", "Ctrl+PgDown",
          tip="Open the next image of the project (the current annotations are saved first)"),
    _spec("previous_image", "Previous image", "Project", "Ctrl+PgUp",
          tip="Open the previous image of the project (the current annotations are saved first)"),
    _spec("refresh_project", "Refresh", "Project", tip="Re-read the project's images and annotation files"),
    _spec("screenshot", "Save screenshot…", "File"),
    _spec("quit", "&Quit", "File", StandardKey.Quit),

    _spec("undo", "&Undo", "Edit", ["Ctrl+Z"]),
    _spec("redo", "&Redo", "Edit", ["Ctrl+Shift+Z", "Ctrl+Y"]),
    _spec("delete", "Delete selected", "Edit", ["Delete", "Backspace"], tip="Delete the selected pairs"),
    _spec("delete_at", "Delete pair under the mouse", "Edit", "D"),
    _spec("repair", "Re-pair", "Edit", "L", tip="Exchange the Golgi of the two selected pairs"),
    _spec("cancel", "Cancel pair / clear selection", "Edit", "Esc"),
    _spec("select_all", "Select all pairs", "Edit", StandardKey.SelectAll),
    _spec("next_pair", "Next pair (table order)", "Edit", ["Tab", "N"]),
    _spec("previous_pair", "Previous pair", "Edit", ["Shift+Tab", "Shift+N"]),

    _spec("review_start", "Review this image", "Review", id_name="start",
          tip="Put this image's predictions (the project's results) up for review and go to the least confident"),
    _spec("accept", "Accept prediction", "Review", "Y",
          tip="The selected prediction is right: it becomes an annotation (source 'corrected')"),
    _spec("reject", "Reject prediction", "Review", "X", tip="The selected prediction is wrong: it is deleted"),
    _spec("reject_below", "Reject all below the score threshold", "Review", id_name="reject_below",
          tip="Reject, in one step, every prediction still to review that the score slider hides"),
    _spec("next_unreviewed", "Next to review", "Review", "]", id_name="next",
          tip="The next prediction still to review (least confident first)"),
    _spec("previous_unreviewed", "Previous to review", "Review", "[", id_name="previous"),
    _spec("next_uncertain", "Next most uncertain in project", "Review", "U",
          tip="Open the image holding the prediction the model is least sure of, across the project, and go to it"),

    _spec("place_mode", "Place mode", "Annotate", "P", checkable=True, tip="Clicks place a nucleus, then its Golgi"),
    _spec("place_nucleus", "Place nucleus at the mouse", "Annotate", "A"),
    _spec("place_golgi", "Place Golgi at the mouse", "Annotate", "G"),
    _spec("snap", "Snap", "Annotate", "S", checkable=True,
          tip="Snap a placed point to the intensity peak of its channel (nucleus or Golgi) within the radius"),

    _spec("mip", "Maximum intensity projection", "View", "M", checkable=True, icon_text="MIP"),
    _spec("fit", "Fit views", "View", "F"),
    _spec("slice_up", "Next slice", "View", ["PgUp", "."]),
    _spec("slice_down", "Previous slice", "View", ["PgDown", ","]),
    *(_spec(f"channel_{index + 1}", f"Show/hide channel {index + 1}", "View", str(index + 1)) for index in range(4)),
    _spec("evaluation_colours", "Colour by evaluation (TP/FP/FN)", "Analysis", "E", checkable=True),
    _spec("render_mip", "3D: maximum intensity", "3D view", "R", checkable=True, icon_text="3D MIP"),
    _spec("planes", "3D: slice planes", "3D view", "O", checkable=True, icon_text="3D planes"),
    _spec("slab", "3D: clip to a slab around the crosshair", "3D view", "C", checkable=True, icon_text="3D slab"),
    *(_spec(f"slab_{letter}", f"3D: slab across {letter}", "3D view", checkable=True, exclusive="slab_axis")
      for letter in "zyx"),
    _spec("slab_next_axis", "3D: slab across the next axis (z → y → x)", "3D view", "Shift+C"),
    _spec("reset_3d", "3D: reset camera", "3D view", "Shift+F"),
    _spec("shortcuts", "&Keyboard shortcuts", "Help", [StandardKey.HelpContents, "?"]),
    _spec("show_log", "Show &log", "Help", tip="Open the log file (unexpected errors are written there)"),
    _spec("about", "&About CellPol Studio", "Help"),
)


@dataclass(frozen=True)
class MenuSpec:
    """A menu: its ``name`` (key of :func:`create_menus`' result), title and items (action names, ``None`` for
    a separator, or a sub-menu)."""

    name: str
    title: str
    items: tuple[Union[str, None, "MenuSpec"], ...] = ()


#: The menu bar. "Open recent" is filled by the window when it is shown; the View menu gets the docks after.
MENUS: tuple[MenuSpec, ...] = (
    MenuSpec("file", "&File", (
        "open", "open_project", "new_project", "demo", MenuSpec("recent", "Open &recent"), None,
        "save", "save_as", "import", MenuSpec("export", "&Export vectors as", ("export_legacy", "export_3dngmic")),
        None, "previous_image", "next_image", None, "voxel_size", "screenshot", None, "quit")),
    MenuSpec("edit", "&Edit", (
        "undo", "redo", None, "delete", "delete_at", "repair", "cancel", None, "select_all", "next_pair",
        "previous_pair")),
    MenuSpec("annotate", "&Annotate", ("place_mode", "place_nucleus", "place_golgi", "snap")),
    MenuSpec("analysis", "A&nalysis", ("predict", "review", "evaluate", "statistics", None, "train", "synthesize", None,
                                       "reference", "clear_reference",
                                       "evaluation_colours")),
    MenuSpec("review", "Re&view", ("review_start", None, "accept", "reject", "next_unreviewed",
                                   "previous_unreviewed", None, "reject_below", "next_uncertain")),
    MenuSpec("view", "&View", (
        "mip", "fit", "slice_up", "slice_down", None, "channel_1", "channel_2", None,
        "render_mip", "planes", "slab", "slab_z", "slab_y", "slab_x", "reset_3d")),
    MenuSpec("help", "&Help", ("shortcuts", "show_log", None, "about")),
)

#: The main toolbar (``None``: a separator).
TOOLBAR: tuple[Optional[str], ...] = (
    "open", "save", None, "undo", "redo", None, "place_mode", "snap", "mip", None, "render_mip", "planes", "slab")

_GROUPS = {spec.name: spec.group for spec in ACTIONS}


def create_actions(owner: QtWidgets.QWidget, slots: Mapping[str, Callable]) -> dict[str, QtGui.QAction]:
    """One :class:`QAction` per :data:`ACTIONS` entry, added to ``owner`` and connected to ``slots[name]``.

    Parameters
    ----------
    owner : QWidget
        The window: the actions are its children and their shortcuts work anywhere in it, even for actions
        in no visible menu.
    slots : mapping of str to callable
        What each action does, one per action; a checkable action's slot receives the new state.

    Returns
    -------
    dict of str to QAction
        In :data:`ACTIONS` order.

    Raises
    ------
    KeyError
        If an action has no slot (it would be a menu item that does nothing) or a slot names no action.
    """
    missing, unknown = set(_GROUPS) - set(slots), set(slots) - set(_GROUPS)
    if missing or unknown:
        raise KeyError(f"Actions without a slot: {sorted(missing)}; slots for no action: {sorted(unknown)}")
    actions: dict[str, QtGui.QAction] = {}
    exclusive: dict[str, QtGui.QActionGroup] = {}
    for spec in ACTIONS:
        action = QtGui.QAction(spec.text, owner)
        action.setObjectName(spec.id)
        if spec.shortcuts:
            action.setShortcuts([QtGui.QKeySequence(s) for s in spec.shortcuts])
            action.setShortcutContext(QtCore.Qt.ShortcutContext.WindowShortcut)
        action.setCheckable(spec.checkable)
        if spec.tip:
            action.setToolTip(spec.tip)
            action.setStatusTip(spec.tip)
        if spec.icon_text:
            action.setIconText(spec.icon_text)
        (action.toggled if spec.checkable else action.triggered).connect(slots[spec.name])
        if spec.exclusive:
            if spec.exclusive not in exclusive:
                exclusive[spec.exclusive] = QtGui.QActionGroup(owner)
            exclusive[spec.exclusive].addAction(action)
        owner.addAction(action)
        actions[spec.name] = action
    return actions


def create_menus(bar: QtWidgets.QMenuBar, actions: Mapping[str, QtGui.QAction]) -> dict[str, QtWidgets.QMenu]:
    """Fill ``bar`` with :data:`MENUS`; returns every menu, sub-menus included, by name."""
    menus: dict[str, QtWidgets.QMenu] = {}

    def fill(menu: QtWidgets.QMenu, spec: MenuSpec) -> None:
        menus[spec.name] = menu
        for item in spec.items:
            if item is None:
                menu.addSeparator()
            elif isinstance(item, MenuSpec):
                fill(menu.addMenu(item.title), item)
            else:
                menu.addAction(actions[item])

    for spec in MENUS:
        fill(bar.addMenu(spec.title), spec)
    return menus


def fill_toolbar(toolbar: QtWidgets.QToolBar, actions: Mapping[str, QtGui.QAction]) -> None:
    """Put the :data:`TOOLBAR` actions on ``toolbar``, as text buttons."""
    toolbar.setToolButtonStyle(QtCore.Qt.ToolButtonStyle.ToolButtonTextOnly)
    for name in TOOLBAR:
        toolbar.addSeparator() if name is None else toolbar.addAction(actions[name])


#: The panels' stable ids (their widgets' ``objectName``) and names, as Help ▸ Keyboard shortcuts lists them.
PANELS: tuple[tuple[str, str], ...] = (
    ("cellpol.vectors", "Vectors panel"), ("cellpol.channels", "Channels panel"), ("cellpol.project", "Project panel"),
    ("cellpol.view3d", "3D view"), ("cellpol.predict", "Predict panel"), ("cellpol.review", "Review panel"),
    ("cellpol.evaluate", "Evaluate panel (prediction sets)"), ("cellpol.comparison", "Comparison panel (one reference)"),
    ("cellpol.stats", "Statistics panel"), ("cellpol.train", "Train panel"), ("cellpol.synth", "Synthesis panel"),
    ("cellpol.jobs", "Jobs panel"),
)


def shortcut_rows(actions: Mapping[str, QtGui.QAction], with_ids: bool = False,
                  keyed_only: bool = True) -> list[tuple[str, ...]]:
    """``(keys, action, group)`` for every action with a shortcut (every action, keys ``""`` where it has none,
    unless ``keyed_only``), as the shortcuts dialog lists them; ``with_ids``: ``(keys, action, group, id)``,
    the id being the action's ``objectName``."""
    rows = []
    for name, action in actions.items():
        keys = ", ".join(native_text(s) for s in action.shortcuts() if not s.isEmpty())
        if keys or not keyed_only:
            row = (keys, action.text().replace("&", ""), _GROUPS.get(name, ""))
            rows.append(row + (action.objectName(),) if with_ids else row)
    return rows
