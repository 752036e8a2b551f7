/// Named points in a request's life, with QEMU's blkdebug event names
/// (`BlkdebugEvent` in QEMU's block.json).
///
/// The engine emits the request-path events on the node it is working on;
/// format drivers emit their own events on their file child
/// (``BlockNode/emit(_:)``), as QEMU's `BLKDBG_EVENT(bs->file, ...)` does. A
/// driver that sets ``DriverCapabilities/handlesDebugEvents`` receives them in
/// ``BlockDriver/debugEvent(_:_:)`` and may fail or suspend the request there
/// (blkdebug's inject-error and break).
public enum BlockDebugEvent: String, Sendable, CaseIterable {
  case l1Update = "l1_update"
  case l1GrowAllocTable = "l1_grow_alloc_table"
  case l1GrowWriteTable = "l1_grow_write_table"
  case l1GrowActivateTable = "l1_grow_activate_table"
  case l2Load = "l2_load"
  case l2Update = "l2_update"
  case l2UpdateCompressed = "l2_update_compressed"
  case l2AllocCowRead = "l2_alloc_cow_read"
  case l2AllocWrite = "l2_alloc_write"
  case readAIO = "read_aio"
  case readBackingAIO = "read_backing_aio"
  case readCompressed = "read_compressed"
  case writeAIO = "write_aio"
  case writeCompressed = "write_compressed"
  case vmstateLoad = "vmstate_load"
  case vmstateSave = "vmstate_save"
  case cowRead = "cow_read"
  case cowWrite = "cow_write"
  case reftableLoad = "reftable_load"
  case reftableGrow = "reftable_grow"
  case reftableUpdate = "reftable_update"
  case refblockLoad = "refblock_load"
  case refblockUpdate = "refblock_update"
  case refblockUpdatePart = "refblock_update_part"
  case refblockAlloc = "refblock_alloc"
  case refblockAllocHookup = "refblock_alloc_hookup"
  case refblockAllocWrite = "refblock_alloc_write"
  case refblockAllocWriteBlocks = "refblock_alloc_write_blocks"
  case refblockAllocWriteTable = "refblock_alloc_write_table"
  case refblockAllocSwitchTable = "refblock_alloc_switch_table"
  case clusterAlloc = "cluster_alloc"
  case clusterAllocBytes = "cluster_alloc_bytes"
  case clusterFree = "cluster_free"
  case flushToOS = "flush_to_os"
  case flushToDisk = "flush_to_disk"
  case pwritevRmwHead = "pwritev_rmw_head"
  case pwritevRmwAfterHead = "pwritev_rmw_after_head"
  case pwritevRmwTail = "pwritev_rmw_tail"
  case pwritevRmwAfterTail = "pwritev_rmw_after_tail"
  case pwritev = "pwritev"
  case pwritevZero = "pwritev_zero"
  case pwritevDone = "pwritev_done"
  case emptyImagePrepare = "empty_image_prepare"
  case l1ShrinkWriteTable = "l1_shrink_write_table"
  case l1ShrinkFreeL2Clusters = "l1_shrink_free_l2_clusters"
  case corWrite = "cor_write"
  case clusterAllocSpace = "cluster_alloc_space"
  case none = "none"
}

extension BlockNode {
  /// Emits a debug event on this node: the driver sees it when it declared
  /// ``DriverCapabilities/handlesDebugEvents``; otherwise this costs one test.
  /// A thrown error fails the request that emitted the event.
  @inline(__always)
  public func emit(_ event: BlockDebugEvent) async throws {
    if capabilities.handlesDebugEvents {
      try await driver.debugEvent(self, event)
    }
  }
}
