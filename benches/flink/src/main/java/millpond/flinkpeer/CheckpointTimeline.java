package millpond.flinkpeer;

import org.apache.flink.runtime.state.CheckpointableKeyedStateBackend;
import org.apache.flink.runtime.state.KeyedStateHandle;
import org.apache.flink.runtime.state.SnapshotResult;
import org.apache.flink.runtime.state.filesystem.FsCheckpointStorageAccess;

import java.util.Arrays;
import java.util.concurrent.RunnableFuture;
import java.util.concurrent.atomic.AtomicLong;

/**
 * The timeline phase: an operation (read-modify-write) over the key sequence for S seconds, with
 * one checkpoint taken S/4 into it the way a Flink task takes it, and the ops completed counted in
 * 100 ms buckets, so that the dip a checkpoint makes in throughput shows.
 *
 * <p>As in a task (SubtaskCheckpointCoordinatorImpl, AsyncCheckpointRunnable): the synchronous
 * part runs on the task thread, which processes nothing meanwhile; the asynchronous part runs on
 * another thread while the task thread goes on; once it is done, the task thread, between two
 * chunks of ops, tells the backend the checkpoint completed. If the checkpoint is not done after
 * S seconds, the phase goes on until it is.
 *
 * <p>The clock is read every {@link #CHUNK} ops and each chunk counts in the bucket of the time it
 * ended. The phase ends at the first chunk ending at or after its end: S seconds, or the end of
 * the checkpoint if later, rounded up to a 100 ms boundary; that last chunk (it overshoots the end
 * by a fraction of a millisecond) counts in the last bucket, so that every bucket covers 100 ms.
 */
final class CheckpointTimeline {
    private CheckpointTimeline() {}

    static final long BUCKET_NANOS = 100_000_000L;
    /** Ops between two clock reads: well under a bucket even for RocksDB (~5 µs an op). */
    static final int CHUNK = 64;

    /** What the phase measured; times in nanoseconds since its start. */
    record Result(
            KeyedStateHandle handle,
            long[] bucketOps,
            long phaseNanos,
            long snapshotStart,
            long syncEnd,
            long snapshotEnd,
            long opsDuringSnapshot,
            long opsTotal) {

        double syncSeconds() {
            return (syncEnd - snapshotStart) / 1e9;
        }

        double snapshotSeconds() {
            return (snapshotEnd - snapshotStart) / 1e9;
        }

        /** Ops per second of the task thread from the trigger to the end of the async part. */
        double opsPerSecDuringSnapshot() {
            return opsDuringSnapshot / snapshotSeconds();
        }

        /** Ops per second over the rest of the phase. */
        double opsPerSecOutsideSnapshot() {
            return (opsTotal - opsDuringSnapshot) / ((phaseNanos - (snapshotEnd - snapshotStart)) / 1e9);
        }
    }

    static Result run(
            double seconds,
            int[] seq,
            Measure.KeyOp op,
            CheckpointableKeyedStateBackend<Long> backend,
            FsCheckpointStorageAccess storage,
            long checkpointId)
            throws Exception {
        long snapshotAt = (long) (seconds * 1e9 / 4);
        long end = ceilToBucket((long) (seconds * 1e9));
        long[] buckets = new long[(int) (end / BUCKET_NANOS) + 2];
        int mask = seq.length - 1; // a power of two
        long snapshotStart = -1;
        long syncEnd = -1;
        RunnableFuture<SnapshotResult<KeyedStateHandle>> future = null;
        // Set by the async thread when its part is done; -1 until then.
        AtomicLong asyncEnd = new AtomicLong(-1);
        KeyedStateHandle handle = null;
        boolean completed = false;
        long opsDuring = 0;
        long opsTotal = 0;
        int i = 0;
        long start = System.nanoTime();
        while (true) {
            for (int j = 0; j < CHUNK; j++) {
                op.run(seq[i]);
                i = (i + 1) & mask;
            }
            long now = System.nanoTime() - start;
            long doneAt = asyncEnd.get();
            if (future != null && (doneAt < 0 || now <= doneAt)) {
                opsDuring += CHUNK;
            }
            if (!completed && doneAt >= 0) {
                // The async part is done: what the task does on the JobManager's notification.
                handle = future.get().getJobManagerOwnedSnapshot();
                FlinkState.notifyComplete(backend, checkpointId);
                completed = true;
                end = Math.max(end, ceilToBucket(doneAt));
            }
            boolean last = completed && now >= end;
            int b = (int) ((last ? Math.min(now, end - 1) : now) / BUCKET_NANOS);
            if (b >= buckets.length) {
                buckets = Arrays.copyOf(buckets, Math.max(b + 1, buckets.length * 2));
            }
            buckets[b] += CHUNK;
            opsTotal += CHUNK;
            if (last) {
                return new Result(handle, Arrays.copyOf(buckets, (int) ((end - 1) / BUCKET_NANOS) + 1),
                        now, snapshotStart, syncEnd, asyncEnd.get(), opsDuring, opsTotal);
            }
            if (future == null && now >= snapshotAt) {
                // The synchronous part, on this (the task) thread; the async part on its own thread.
                snapshotStart = now;
                RunnableFuture<SnapshotResult<KeyedStateHandle>> f =
                        FlinkState.snapshotSync(backend, storage, checkpointId);
                syncEnd = System.nanoTime() - start;
                Thread async = new Thread(() -> {
                    f.run(); // an exception is kept in f and thrown by get() above
                    asyncEnd.set(System.nanoTime() - start);
                }, "flink-peer-checkpoint-async");
                async.setDaemon(true);
                async.start();
                future = f;
            }
        }
    }

    private static long ceilToBucket(long nanos) {
        return (nanos + BUCKET_NANOS - 1) / BUCKET_NANOS * BUCKET_NANOS;
    }
}
