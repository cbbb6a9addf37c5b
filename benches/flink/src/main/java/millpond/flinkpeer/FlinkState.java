package millpond.flinkpeer;

import org.apache.flink.api.common.JobID;
import org.apache.flink.api.common.state.MapStateDescriptor;
import org.apache.flink.api.common.state.ValueStateDescriptor;
import org.apache.flink.api.common.typeutils.base.LongSerializer;
import org.apache.flink.api.common.typeutils.base.array.BytePrimitiveArraySerializer;
import org.apache.flink.configuration.CheckpointingOptions;
import org.apache.flink.configuration.Configuration;
import org.apache.flink.configuration.StateBackendOptions;
import org.apache.flink.core.fs.CloseableRegistry;
import org.apache.flink.metrics.groups.UnregisteredMetricsGroup;
import org.apache.flink.runtime.checkpoint.CheckpointOptions;
import org.apache.flink.runtime.execution.Environment;
import org.apache.flink.runtime.state.CheckpointStorageLocation;
import org.apache.flink.runtime.state.CheckpointableKeyedStateBackend;
import org.apache.flink.runtime.state.KeyGroupRange;
import org.apache.flink.runtime.state.KeyedStateBackendParametersImpl;
import org.apache.flink.runtime.state.KeyedStateHandle;
import org.apache.flink.runtime.state.SnapshotResult;
import org.apache.flink.runtime.state.StateBackend;
import org.apache.flink.runtime.state.StateBackendLoader;
import org.apache.flink.runtime.state.filesystem.FsCheckpointStorageAccess;
import org.apache.flink.runtime.state.ttl.TtlTimeProvider;
import org.apache.flink.state.forst.ForStOptions;
import org.apache.flink.state.forst.ForStStateBackend;
import org.apache.flink.state.rocksdb.RocksDBMemoryControllerUtils;
import org.apache.flink.state.rocksdb.RocksDBOptions;

import org.slf4j.LoggerFactory;

import java.io.File;
import java.nio.file.Files;
import java.nio.file.Path;
import java.util.Collection;
import java.util.LinkedHashMap;
import java.util.Map;
import java.util.concurrent.RunnableFuture;

/**
 * Builds one of Flink's keyed state backends outside a job, the way a task would, and takes and
 * restores its checkpoints.
 *
 * <p>A running task gets its keyed state backend from {@code StateBackend#createKeyedStateBackend}
 * with the task's {@code Environment} (memory manager, I/O manager, temp dirs, local recovery
 * config). Here that is {@link TaskEnvironment}, with the managed memory set to the budget. The
 * StateBackend itself is loaded from a {@link Configuration} by {@link StateBackendLoader}, as a
 * TaskManager loads it from a job's configuration; so every option is the production default
 * unless set below.
 */
final class FlinkState {
    private FlinkState() {}

    /** Key groups: Flink's default max parallelism for a parallelism-1 job, and millpond's. */
    static final int KEY_GROUPS = 128;

    /** The JVM heap for the RocksDB and ForSt runs: the state lives off-heap, in managed memory. */
    static final long NATIVE_BACKEND_HEAP_BYTES = 128L << 20;

    static final ValueStateDescriptor<byte[]> VALUE =
            new ValueStateDescriptor<>("bench", BytePrimitiveArraySerializer.INSTANCE);
    static final MapStateDescriptor<Long, byte[]> MAP =
            new MapStateDescriptor<>(
                    "bench-map", LongSerializer.INSTANCE, BytePrimitiveArraySerializer.INSTANCE);

    /** The job configuration a user would write for this backend. */
    static Configuration config(String backend, Path dbDir) {
        Configuration c = new Configuration();
        switch (backend) {
            case "hashmap":
                c.set(StateBackendOptions.STATE_BACKEND, "hashmap");
                break;
            case "rocksdb":
                c.set(StateBackendOptions.STATE_BACKEND, "rocksdb");
                // Incremental checkpoints (SST files shared between checkpoints), as production.
                c.set(CheckpointingOptions.INCREMENTAL_CHECKPOINTS, true);
                c.set(RocksDBOptions.LOCAL_DIRECTORIES, dbDir.toString());
                // The default, spelled out: block cache and write buffers share managed memory.
                c.set(RocksDBOptions.USE_MANAGED_MEMORY, true);
                break;
            case "forst":
                c.set(StateBackendOptions.STATE_BACKEND, "forst");
                c.set(CheckpointingOptions.INCREMENTAL_CHECKPOINTS, true);
                c.set(ForStOptions.LOCAL_DIRECTORIES, dbDir.toString());
                // The synchronous keyed state API (ValueState#value) runs ForSt on local disk
                // (state.backend.forst.sync.enforce-local, default true); say so explicitly.
                c.set(ForStOptions.PRIMARY_DIRECTORY, ForStStateBackend.LOCAL_DIR_AS_PRIMARY_SHORTCUT);
                c.set(ForStOptions.USE_MANAGED_MEMORY, true);
                break;
            default:
                throw new IllegalArgumentException(
                        "--backend must be hashmap, rocksdb or forst, not " + backend);
        }
        return c;
    }

    /**
     * -Xmx for the measured JVMs: the whole budget for the heap backend, else a small heap
     * (--heap overrides both).
     */
    static long heapBytes(Args a) {
        if (a.heap > 0) {
            return a.heap;
        }
        return a.backend.equals("hashmap") ? a.memoryBudget : NATIVE_BACKEND_HEAP_BYTES;
    }

    /** Flink managed memory for the measured backend: the budget for RocksDB and ForSt. */
    static long managedBytes(String backend, long budget) {
        return backend.equals("hashmap") ? 0 : budget;
    }

    /** What the memory budget became, for the JSON's memory_config. */
    static Map<String, Object> memoryConfig(Args a) {
        Map<String, Object> m = new LinkedHashMap<>();
        long heap = heapBytes(a);
        long managed = managedBytes(a.backend, a.memoryBudget);
        m.put("jvm_heap_max_bytes", heap);
        m.put("managed_memory_bytes", managed);
        m.put("managed_memory_fraction", managed > 0 ? 1.0 : 0.0);
        if (a.backend.equals("hashmap")) {
            m.put("note", "state on the JVM heap (-Xmx " + (heap >> 20) + "m"
                    + (heap == a.memoryBudget ? " = budget" : "") + "); no managed memory");
        } else {
            // Flink's formulas (RocksDBMemoryControllerUtils; ForSt's are the same, with the same
            // defaults): with write-buffer-ratio r = 0.5 the shared LRU block cache gets
            // (3 - r) / 3 of managed memory and the write buffer manager 2r/3 of it, charged to
            // the cache; index/filter blocks live in the cache's high-priority pool (0.1).
            double r = RocksDBOptions.WRITE_BUFFER_RATIO.defaultValue();
            m.put("write_buffer_ratio", r);
            m.put("high_prio_pool_ratio", RocksDBOptions.HIGH_PRIORITY_POOL_RATIO.defaultValue());
            m.put("block_cache_bytes", RocksDBMemoryControllerUtils.calculateActualCacheCapacity(managed, r));
            m.put("write_buffer_manager_bytes", (long) (2 * managed * r / 3));
            m.put("note", "state off-heap: managed memory = budget (shared block cache + write"
                    + " buffer manager, per slot); -Xmx " + (heap >> 20) + "m for the JVM side");
        }
        return m;
    }

    /** Restore metrics the backend reports while it builds (download and restore durations). */
    static final Map<String, Long> RESTORE_METRICS = new LinkedHashMap<>();

    /**
     * A keyed state backend for Long keys over all key groups, restored from handles if any
     * (an empty list: a fresh backend).
     */
    static CheckpointableKeyedStateBackend<Long> create(
            StateBackend backend, Environment env, Collection<KeyedStateHandle> handles)
            throws Exception {
        return backend.createKeyedStateBackend(
                new KeyedStateBackendParametersImpl<>(
                        env,
                        env.getJobID(),
                        "bench",
                        LongSerializer.INSTANCE,
                        KEY_GROUPS,
                        new KeyGroupRange(0, KEY_GROUPS - 1),
                        null, // no queryable state
                        TtlTimeProvider.DEFAULT,
                        new UnregisteredMetricsGroup(),
                        RESTORE_METRICS::put,
                        handles,
                        new CloseableRegistry(),
                        1.0)); // this operator gets all of the slot's managed memory
    }

    static StateBackend load(Configuration c) throws Exception {
        return StateBackendLoader.loadStateBackendFromConfig(
                c, FlinkState.class.getClassLoader(), LoggerFactory.getLogger(FlinkState.class));
    }

    /**
     * The checkpoint storage a job with {@code execution.checkpointing.dir: file://dir} gets: a
     * directory per job with chk-N/, shared/ (incremental SST files) and taskowned/. State
     * smaller than the default 20 KiB threshold is inlined into the handle, as in production.
     */
    static FsCheckpointStorageAccess checkpointStorage(Path dir, JobID job) throws Exception {
        FsCheckpointStorageAccess access =
                new FsCheckpointStorageAccess(
                        new org.apache.flink.core.fs.Path(dir.toUri()),
                        null,
                        job,
                        (int) CheckpointingOptions.FS_SMALL_FILE_THRESHOLD.defaultValue().getBytes(),
                        CheckpointingOptions.FS_WRITE_BUFFER_SIZE.defaultValue());
        access.initializeBaseLocationsForCheckpoint();
        return access;
    }

    /**
     * The synchronous part of checkpoint id, as a task runs it on its own thread (record
     * processing pauses meanwhile): resolving the checkpoint's storage location, then
     * snapshot(): for RocksDB and ForSt a memtable flush and a native checkpoint (hard links),
     * for the heap backend a copy-on-write view of every key group. The returned future is the
     * asynchronous part (upload or serialization), which a task runs on its async-operations
     * thread pool while it goes on processing records.
     */
    static RunnableFuture<SnapshotResult<KeyedStateHandle>> snapshotSync(
            CheckpointableKeyedStateBackend<Long> backend, FsCheckpointStorageAccess storage, long id)
            throws Exception {
        CheckpointStorageLocation location = storage.initializeLocationForCheckpoint(id);
        return backend.snapshot(
                id, System.currentTimeMillis(), location, CheckpointOptions.forCheckpointWithDefaultLocation());
    }

    /**
     * What the task does when the JobManager reports checkpoint id complete: incremental
     * RocksDB and ForSt base the next checkpoint on it.
     */
    static void notifyComplete(CheckpointableKeyedStateBackend<Long> backend, long id) throws Exception {
        if (backend instanceof org.apache.flink.api.common.state.CheckpointListener listener) {
            listener.notifyCheckpointComplete(id);
        }
    }

    static void deleteRecursively(Path dir) {
        File f = dir.toFile();
        if (!f.exists()) {
            return;
        }
        try (var paths = Files.walk(dir)) {
            paths.sorted(java.util.Comparator.reverseOrder()).map(Path::toFile).forEach(File::delete);
        } catch (Exception e) {
            System.err.println("flink-peer: could not delete " + dir + ": " + e);
        }
    }

    static String flinkVersion() {
        return org.apache.flink.runtime.util.EnvironmentInformation.getVersion();
    }
}
