/**
 * The Prometheus metrics of one cachefs process, in a registry of its own (so
 * several components can live in one test process). Served on `/metrics` by
 * `metrics-server.ts`. Bytes read by the client are labelled by the path that
 * served them: `cache` (embedded cache), `short_circuit` (with `via="descriptor"` or
 * `via="path"`), `domain_socket`, `remote`, `ufs`.
 */
import { Counter, Gauge, Registry, collectDefaultMetrics } from 'prom-client';
import { OpTimings } from './op-timings.js';

export type ReadPath = 'cache' | 'short_circuit' | 'domain_socket' | 'remote' | 'ufs';

export class Metrics {
  readonly registry = new Registry();
  /** `via` on short-circuit bytes: `descriptor` (the worker passed the block file's descriptor) or `path` (read by its path). */
  readonly clientReadBytes = this.counter('cachefs_client_read_bytes_total', 'Bytes returned to readers, by the path that served them (and, for short_circuit, how the block file was reached)', ['path', 'via']);
  readonly clientPassedDescriptors = this.sampled('cachefs_client_passed_descriptors', "Block file descriptors co-located workers passed to this mount, open now");
  readonly cacheHits = this.counter('cachefs_cache_hits_total', 'Block reads served from the cache');
  readonly cacheMisses = this.counter('cachefs_cache_misses_total', 'Block reads that had to fetch the block from the UFS');
  readonly cacheEvictions = this.counter('cachefs_cache_evictions_total', 'Blocks evicted from the cache');
  readonly cacheFileChecks = this.counter('cachefs_cache_file_checks_total', 'Cached block files read and hashed whole before their first bytes were served (not those this process wrote)');
  readonly cacheCorrupt = this.counter('cachefs_cache_corrupt_blocks_total', 'Cached block files found damaged and dropped');
  readonly cacheWholeObjects = this.counter('cachefs_cache_whole_objects_total', 'Whole-object files assembled from the cached blocks of objects larger than a block (for FUSE passthrough)');
  readonly cacheUsedBytes = this.gauge('cachefs_cache_used_bytes', 'Bytes of blocks in the cache', ['tier']);
  readonly cacheCapacityBytes = this.gauge('cachefs_cache_capacity_bytes', 'Quota of the cache', ['tier']);
  readonly cacheBlocks = this.gauge('cachefs_cache_blocks', 'Blocks in the cache', ['tier']);
  readonly cacheWritesInFlight = this.gauge('cachefs_cache_writes_in_flight', 'Fetched blocks being written to the cache (their readers may already have the bytes)');
  readonly pinnedBlocks = this.gauge('cachefs_pinned_blocks', 'Blocks pinned by open readers');
  readonly ufsRequests = this.counter('cachefs_ufs_requests_total', 'Requests to the UFS', ['op']);
  readonly ufsReadBytes = this.counter('cachefs_ufs_read_bytes_total', 'Bytes fetched from the UFS');
  readonly ufsErrors = this.counter('cachefs_ufs_errors_total', 'Failed UFS requests', ['op', 'code']);
  readonly fuseOps = new OpTimings(
    this.registry,
    { name: 'cachefs_fuse_ops_total', help: 'FUSE operations' },
    { name: 'cachefs_fuse_op_seconds', help: 'Time from a FUSE request reaching cachefs to its answer, by op' },
    [0.00002, 0.00005, 0.0001, 0.0002, 0.0005, 0.001, 0.002, 0.005, 0.01, 0.05, 0.2, 1, 5],
  );
  readonly fuseReadBytes = this.counter('cachefs_fuse_read_bytes_total', "Bytes answered to the kernel's reads; more than the files' sizes when the kernel dropped pages and asked again");
  readonly readdirplusEntries = this.counter('cachefs_fuse_readdirplus_entries_total', 'Entries answered to readdirplus, by whether they carried their attributes (the kernel sends no lookup for them) or their name alone', ['with']);
  readonly fuseErrors = this.counter('cachefs_fuse_errors_total', 'FUSE operations that failed, by errno name', ['op', 'errno']);
  readonly metaCacheHits = this.tallied('cachefs_meta_cache_hits_total', 'Metadata lookups answered from the cache');
  readonly metaCacheMisses = this.tallied('cachefs_meta_cache_misses_total', 'Metadata lookups that asked the UFS');
  readonly lookupListings = this.counter('cachefs_lookup_listings_total', 'Directories listed because lookups of their names one by one missed the metadata cache, by how the listing ended (whole, partial: stopped short, failed)', ['outcome']);
  readonly listedEntries = this.counter('cachefs_listed_entries_total', 'Directory entries read from the UFS by listings');
  readonly metaCacheBytes = this.sampled('cachefs_meta_cache_bytes', 'Estimated bytes of the metadata cache (entries and whole listings), within --meta-cache-size');
  readonly vfsNodes = this.sampled('cachefs_vfs_nodes', 'Node ids the kernel holds');
  readonly nodesLetGo = this.counter('cachefs_vfs_nodes_let_go_total', 'Files the kernel was asked to drop (NOTIFY_PRUNE, or NOTIFY_INVAL_ENTRY where it takes no prune), so that the node ids it holds stay within a quarter of --meta-cache-size; it forgets them unless they are open');
  readonly skippedNames = this.counter('cachefs_skipped_names_total', 'Object names that cannot be POSIX names and were left out of listings');
  readonly workerServedBytes = this.counter('cachefs_worker_served_bytes_total', 'Block bytes a worker handed to clients, by path', ['path']);
  readonly workerPassedDescriptors = this.counter('cachefs_worker_passed_descriptors_total', 'Block file descriptors a worker passed to co-located clients');
  readonly workerSocketPins = this.sampled('cachefs_worker_socket_pins', 'Pins held by the connections of co-located clients');
  readonly workerRequests = this.counter('cachefs_worker_requests_total', 'Block requests a worker answered, by path and status', ['path', 'status']);
  readonly recoveries = this.counter('cachefs_mount_recoveries_total', 'Times the FUSE serving process was replaced after dying');
  readonly fuseRequestsInFlight = this.sampled('cachefs_fuse_requests_in_flight', 'FUSE requests read from the kernel and not yet answered');
  readonly vfsReadsWaiting = this.sampled('cachefs_vfs_reads_waiting', 'Reads of open files whose block reads have not ended (answered or not)');
  readonly vfsOpenFiles = this.sampled('cachefs_vfs_open_files', 'Files the kernel holds open on the mount');
  readonly passthroughOpens = this.counter('cachefs_fuse_passthrough_opens_total', "Opens answered with FUSE passthrough: the kernel reads those files' cached bytes itself, and no read of them reaches cachefs (nor its byte counters)");
  readonly passthroughOpen = this.sampled('cachefs_fuse_passthrough_open', 'Backing files registered with the kernel for passthrough now (one per file open through it, however many opens share it)');
  readonly passthroughReclaimed = this.counter('cachefs_fuse_passthrough_reclaimed_total', 'Backing files a serving process that died left registered with the kernel, closed by the serving process that took its connection over (each held a cached file open in the kernel)');
  readonly passthroughKept = this.sampled('cachefs_fuse_passthrough_kept', 'Backing files kept registered with the kernel after the last open of their file, so that its next open needs no registration (bounded; dropped when the cache drops the file)');

  readonly dirPrefetchDirs = this.counter('cachefs_dir_prefetch_dirs_total', 'Directories whose small files began to be prefetched, their files being read whole (--prefetch-files)');
  readonly dirPrefetchFiles = this.counter('cachefs_dir_prefetch_files_total', "Small files a directory prefetch brought into the cache (in a cluster mount: had their owner worker hold) before they were opened");
  readonly dirPrefetchBytes = this.counter('cachefs_dir_prefetch_bytes_total', 'Bytes of the files cachefs_dir_prefetch_files_total counts');
  readonly dirPrefetchHits = this.counter('cachefs_dir_prefetch_hits_total', 'Opens of files a directory prefetch brought in (or was bringing in) for them');

  constructor(withProcessMetrics = true) {
    if (withProcessMetrics) collectDefaultMetrics({ register: this.registry, prefix: 'cachefs_process_' });
  }

  private counter<L extends string>(name: string, help: string, labelNames: L[] = []): Counter<L> {
    return new Counter({ name, help, labelNames, registers: [this.registry] });
  }

  /** A gauge whose value is read from its owner when scraped, so that keeping it costs the hot path nothing. */
  private sampled(name: string, help: string): SampledGauge {
    const sampled = new SampledGauge();
    new Gauge({ name, help, registers: [this.registry], collect() { this.set(sampled.sample()); } });
    return sampled;
  }

  /** A counter of the hot path (a lookup, a request): a number added to, read when scraped. */
  private tallied(name: string, help: string): Tally {
    const tally = new Tally();
    new Counter({ name, help, registers: [this.registry], collect() { this.reset(); this.inc(tally.count); } });
    return tally;
  }

  private gauge<L extends string>(name: string, help: string, labelNames: L[] = []): Gauge<L> {
    return new Gauge({ name, help, labelNames, registers: [this.registry] });
  }
}

/** The value behind a sampled gauge: 0 until its owner says where to read it. */
export class SampledGauge {
  private source: () => number = () => 0;

  sampledBy(source: () => number): void {
    this.source = source;
  }

  sample(): number {
    return this.source();
  }
}

/** The value behind a tallied counter. */
export class Tally {
  count = 0;

  inc(): void {
    this.count += 1;
  }
}
