package millpond.flinkpeer;

import org.apache.flink.api.common.ExecutionConfig;
import org.apache.flink.api.common.JobID;
import org.apache.flink.api.common.JobInfoImpl;
import org.apache.flink.api.common.TaskInfoImpl;
import org.apache.flink.configuration.Configuration;
import org.apache.flink.runtime.execution.Environment;
import org.apache.flink.runtime.io.disk.iomanager.IOManager;
import org.apache.flink.runtime.io.disk.iomanager.IOManagerAsync;
import org.apache.flink.runtime.jobgraph.JobType;
import org.apache.flink.runtime.jobgraph.JobVertexID;
import org.apache.flink.runtime.memory.MemoryManager;
import org.apache.flink.runtime.memory.SharedResources;
import org.apache.flink.runtime.metrics.groups.UnregisteredMetricGroups;
import org.apache.flink.runtime.state.CheckpointStorageAccess;
import org.apache.flink.runtime.state.LocalRecoveryConfig;
import org.apache.flink.runtime.state.TaskStateManager;
import org.apache.flink.runtime.taskmanager.TaskManagerRuntimeInfo;
import org.apache.flink.util.UserCodeClassLoader;

import java.io.File;
import java.lang.reflect.Proxy;
import java.nio.file.Path;
import java.util.concurrent.ExecutorService;
import java.util.concurrent.Executors;

/**
 * The slice of a running task's {@link Environment} that Flink's keyed state backends use when
 * they are built, restored and checkpointed: job and task identity, temp directories, the
 * memory manager (whose managed memory RocksDB and ForSt take for their block cache and write
 * buffers), the I/O manager's executor (RocksDB's restore and checkpoint transfers), the user
 * class loader, the checkpoint storage, and the local-recovery config (disabled: the default).
 *
 * <p>Environment has some 45 methods for network, input splits, accumulators and so on that a
 * state backend never calls, so this is a {@link Proxy}: the methods below are answered with
 * the production classes a TaskManager would use, any other one fails loudly with its name.
 * (Flink's own MockEnvironment lives in flink-runtime's test jar, which needs JUnit and Flink's
 * test utilities at run time, so it is not used.)
 */
final class TaskEnvironment implements AutoCloseable {
    /** Flink's default page size of managed memory (taskmanager.memory.segment-size). */
    private static final int PAGE_SIZE = 32 * 1024;

    final Environment env;
    private final MemoryManager memoryManager;
    private final IOManager ioManager;
    private final ExecutorService asyncOperations = Executors.newCachedThreadPool();

    TaskEnvironment(JobID job, long managedMemoryBytes, Path tmpDir, CheckpointStorageAccess storage) {
        ExecutionConfig executionConfig = new ExecutionConfig();
        memoryManager = MemoryManager.create(managedMemoryBytes, PAGE_SIZE);
        ioManager = new IOManagerAsync(tmpDir.toString());
        SharedResources sharedResources = new SharedResources();
        TaskManagerRuntimeInfo tmInfo = taskManagerInfo(tmpDir.toFile());
        UserCodeClassLoader classLoader = userCodeClassLoader();
        TaskStateManager taskStateManager = proxy(TaskStateManager.class, (name, args) -> switch (name) {
            // No local recovery (state.backend.local-recovery: false, the default).
            case "createLocalRecoveryConfig" -> LocalRecoveryConfig.BACKUP_AND_RECOVERY_DISABLED;
            default -> throw new UnsupportedOperationException("TaskStateManager." + name);
        });
        JobVertexID vertex = new JobVertexID();
        env = proxy(Environment.class, (name, args) -> switch (name) {
            case "getJobID" -> job;
            case "getJobVertexId" -> vertex;
            case "getJobType" -> JobType.STREAMING;
            case "getJobInfo" -> new JobInfoImpl(job, "millpond-flink-peer");
            case "getTaskInfo" -> new TaskInfoImpl("bench", FlinkState.KEY_GROUPS, 0, 1, 0);
            case "getExecutionConfig" -> executionConfig;
            case "getJobConfiguration", "getTaskConfiguration" -> new Configuration();
            case "getTaskManagerInfo" -> tmInfo;
            case "getMemoryManager" -> memoryManager;
            case "getSharedResources" -> sharedResources;
            case "getIOManager" -> ioManager;
            case "getUserCodeClassLoader" -> classLoader;
            case "getTaskStateManager" -> taskStateManager;
            case "getMetricGroup" -> UnregisteredMetricGroups.createUnregisteredTaskMetricGroup();
            case "getTaskKvStateRegistry" -> null; // no queryable state
            case "getAsyncOperationsThreadPool" -> asyncOperations;
            case "getCheckpointStorageAccess" -> storage;
            case "failExternally" -> throw new IllegalStateException(
                    "the state backend failed the task", (Throwable) args[0]);
            default -> throw new UnsupportedOperationException("Environment." + name);
        });
    }

    /** A function of a method's name and arguments, for {@link #proxy}. */
    private interface Answer {
        Object answer(String method, Object[] args) throws Throwable;
    }

    @SuppressWarnings("unchecked")
    private static <T> T proxy(Class<T> type, Answer answer) {
        return (T) Proxy.newProxyInstance(
                type.getClassLoader(),
                new Class<?>[] {type},
                (self, method, args) -> switch (method.getName()) {
                    case "toString" -> type.getSimpleName() + "(millpond-flink-peer)";
                    case "hashCode" -> System.identityHashCode(self);
                    case "equals" -> self == args[0];
                    default -> answer.answer(method.getName(), args);
                });
    }

    private static TaskManagerRuntimeInfo taskManagerInfo(File tmpDir) {
        return new TaskManagerRuntimeInfo() {
            @Override
            public Configuration getConfiguration() {
                return new Configuration();
            }

            @Override
            public String[] getTmpDirectories() {
                return new String[] {tmpDir.toString()};
            }

            @Override
            public boolean shouldExitJvmOnOutOfMemoryError() {
                return false;
            }

            @Override
            public String getTaskManagerExternalAddress() {
                return "localhost";
            }

            @Override
            public File getTmpWorkingDirectory() {
                return tmpDir;
            }
        };
    }

    private static UserCodeClassLoader userCodeClassLoader() {
        ClassLoader cl = TaskEnvironment.class.getClassLoader();
        return new UserCodeClassLoader() {
            @Override
            public ClassLoader asClassLoader() {
                return cl;
            }

            @Override
            public void registerReleaseHookIfAbsent(String name, Runnable hook) {}
        };
    }

    @Override
    public void close() throws Exception {
        asyncOperations.shutdownNow();
        ioManager.close();
        memoryManager.shutdown();
    }
}
