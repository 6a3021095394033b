"""nnU-Net trainers with blob loss, Tversky and TopK-Dice (see :mod:`nnunet_blob.trainers.variants`).

**Instance-aware trainers: the contract.** A trainer whose loss receives instances (the blob trainers: instance
maps; the CC-DiceCE trainers: Voronoi cells) is a :class:`~.base.InstanceTermTrainer` and supplies:

* ``prepare_instances() -> InstanceSetup`` (its data source; :class:`~.instance_setup.InstanceSetupTrainer`): the
  start-up step. ``initialize()`` runs it once, on every rank, before nnU-Net builds the loss; heavy or
  collective work belongs here (the maps trainer finds, checks or computes the instance maps, rank 0 computing while
  the other ranks wait) and nowhere else: no property computes anything.
* ``instance_setup`` (:class:`~.instance_setup.InstanceSetup`, frozen): what the start-up step returned, read by
  everything after it; ``packing``, how the ids ride in the target's last channels (the loss, the pipelines and the
  validation step unpack them this way), and ``connectivity``, the one connectivity of its instances: of the
  reference instances (the maps', ``cell_connectivity``), of the online F1's predicted components and of the final
  validation's lesion-wise metrics (``validation/summary_instances.json``). ``instance_packing`` and
  ``online_connectivity`` are shorthands for its two fields.
* ``build_instance_loss(nnunet_loss) -> (output, target, instances) -> scalar`` (its loss): the one hook for the
  loss of one output scale; ``nnunet_loss`` is nnU-Net's ``DC_and_CE_loss`` for a global term
  (:class:`~.variants.GlobalTerm`). The trainer wraps it so that it receives the instances unpacked from the target.
* ``online_reference_ids(reference, maps)`` (optional): the reference instance ids of a validation batch from the
  maps its targets carry (default: the maps themselves; the CC trainers read the cells of each voxel's class).

The loss does not depend on the order of base classes: ``build_inner_loss`` and ``lesion_connectivity`` are the
contract's own, and a class that would resolve either elsewhere (another loss trainer listed first, or an override)
is refused with a TypeError when it is defined.

``nnunet_ext/`` is the folder that nnU-Net's ``-tr`` lookup scans (:mod:`nnunet_blob.registration`).
"""
