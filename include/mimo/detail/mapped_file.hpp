// A read-only memory mapping of a whole file. Weights are used in place from the mapping, so a
// 15 GB checkpoint costs page cache, not heap.
//
// What remains unprotected: a file truncated by another process after it was mapped makes reads
// past the new end fault (SIGBUS on POSIX; Windows refuses to truncate a mapped file). Sizes are
// validated when the file is opened; the descriptor stays open so that size_unchanged() can ask
// whether the mapped file (the same inode, even if its path was renamed over) has shrunk since,
// and the loader checks it before and after its `preload` pass reads every page once. A file
// truncated after that, while the model is in use, still faults: no library can prevent it
// without a process-wide signal handler, which this one will not install.
#pragma once

#include <algorithm>
#include <cstddef>
#include <cstdint>
#include <cstdio>
#include <cstring>
#include <filesystem>
#include <string>
#include <utility>
#include <vector>

#include "mimo/error.hpp"

#if defined(_WIN32)
#ifndef WIN32_LEAN_AND_MEAN
#define WIN32_LEAN_AND_MEAN
#define MIMO_UNDEF_WIN32_LEAN_AND_MEAN
#endif
#ifndef NOMINMAX
#define NOMINMAX
#define MIMO_UNDEF_NOMINMAX
#endif
#include <windows.h>
#ifdef MIMO_UNDEF_WIN32_LEAN_AND_MEAN
#undef WIN32_LEAN_AND_MEAN
#undef MIMO_UNDEF_WIN32_LEAN_AND_MEAN
#endif
#ifdef MIMO_UNDEF_NOMINMAX
#undef NOMINMAX
#undef MIMO_UNDEF_NOMINMAX
#endif
#else
#include <fcntl.h>
#include <sys/ioctl.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>
#endif

namespace mimo::detail {

class MappedFile {
 public:
  MappedFile() = default;
  MappedFile(MappedFile&& o) noexcept { swap(o); }
  MappedFile& operator=(MappedFile&& o) noexcept {
    if (this != &o) {
      release();
      swap(o);
    }
    return *this;
  }
  MappedFile(const MappedFile&) = delete;
  MappedFile& operator=(const MappedFile&) = delete;
  ~MappedFile() { release(); }

  // `huge_pages` asks the kernel to back the mapping with 2 MiB pages where it can (Linux,
  // filesystems with large folios): streaming gigabytes through millions of 4 KiB mappings costs
  // a TLB miss per page, which on some virtual machines makes decoding several times slower.
  static Expected<MappedFile> open(const std::filesystem::path& path, bool huge_pages = false) {
    MappedFile m;
    m.path_ = path.string();
#if defined(_WIN32)
    HANDLE file = CreateFileW(path.c_str(), GENERIC_READ, FILE_SHARE_READ, nullptr, OPEN_EXISTING,
                              FILE_ATTRIBUTE_NORMAL, nullptr);
    if (file == INVALID_HANDLE_VALUE) return Error(Errc::io, m.path_ + ": cannot open");
    LARGE_INTEGER size;
    if (!GetFileSizeEx(file, &size)) {
      CloseHandle(file);
      return Error(Errc::io, m.path_ + ": cannot read size");
    }
    m.size_ = static_cast<uint64_t>(size.QuadPart);
    if (m.size_ > 0) {
      HANDLE mapping = CreateFileMappingW(file, nullptr, PAGE_READONLY, 0, 0, nullptr);
      if (!mapping) {
        CloseHandle(file);
        return Error(Errc::io, m.path_ + ": cannot map");
      }
      m.data_ = static_cast<const std::byte*>(MapViewOfFile(mapping, FILE_MAP_READ, 0, 0, 0));
      CloseHandle(mapping);
      if (!m.data_) {
        CloseHandle(file);
        return Error(Errc::io, m.path_ + ": cannot map");
      }
    }
    CloseHandle(file);
#else
    const int fd = ::open(m.path_.c_str(), O_RDONLY | O_CLOEXEC);
    if (fd < 0) return Error(Errc::io, m.path_ + ": cannot open");
    struct stat st {};
    if (::fstat(fd, &st) != 0) {
      ::close(fd);
      return Error(Errc::io, m.path_ + ": cannot read size");
    }
    if (!S_ISREG(st.st_mode)) {
      ::close(fd);
      return Error(Errc::io, m.path_ + ": not a regular file");
    }
    m.size_ = static_cast<uint64_t>(st.st_size);
    if (m.size_ > 0) {
      void* p = ::mmap(nullptr, m.size_, PROT_READ, MAP_SHARED, fd, 0);
      if (p == MAP_FAILED) {
        ::close(fd);
        return Error(Errc::io, m.path_ + ": cannot map " + std::to_string(m.size_) + " bytes");
      }
      m.data_ = static_cast<const std::byte*>(p);
#if defined(MADV_HUGEPAGE)
      if (huge_pages) ::madvise(p, m.size_, MADV_HUGEPAGE);
#endif
    }
    m.fd_ = fd;
#endif
    (void)huge_pages;
    return m;
  }

  // Bytes of this mapping the kernel maps with huge pages (Linux; 0 elsewhere or when unknown).
  uint64_t huge_mapped_bytes() const {
#if defined(__linux__)
    if (!data_) return 0;
    std::FILE* f = std::fopen("/proc/self/smaps", "r");
    if (!f) return 0;
    char line[512];
    bool inside = false;
    uint64_t kb = 0;
    const auto start = reinterpret_cast<uintptr_t>(data_);
    while (std::fgets(line, sizeof line, f)) {
      unsigned long long lo = 0, hi = 0;
      if (std::sscanf(line, "%llx-%llx ", &lo, &hi) == 2 && std::strchr(line, '-') < std::strchr(line, ' ')) {
        inside = lo <= start && start < hi;
        continue;
      }
      unsigned long long v = 0;
      if (inside && std::sscanf(line, "FilePmdMapped: %llu kB", &v) == 1) kb += v;
    }
    std::fclose(f);
    return kb * 1024;
#else
    return 0;
#endif
  }

  // Byte ranges of the file, in whole huge pages (2 MiB), that are not mapped here with huge
  // pages: cached in small pages, or not resident. Under memory pressure the kernel evicts parts
  // of a cached file and reads them back in small pages; decoding streamed such stretches of the
  // 7B at 35-55 GB/s where huge pages gave 57-68 (2 threads, one run). Asks the kernel's
  // PAGEMAP_SCAN (Linux 6.7+), which needs no privileges. An error where it cannot tell: an older
  // kernel, another system, or a mapping not aligned to huge pages.
  Expected<std::vector<std::pair<uint64_t, uint64_t>>> small_page_ranges() const {
#if defined(__linux__)
    constexpr uint64_t kHuge = 2ull << 20;
    const auto base = reinterpret_cast<uintptr_t>(data_);
    if (!data_ || base % kHuge != 0) return Error(Errc::unsupported, path_ + ": not mapped at a huge-page boundary");
    // The kernel's struct pm_scan_arg and struct page_region (uapi linux/fs.h), a stable ABI.
    struct Region {
      uint64_t start, end, categories;
    };
    struct ScanArg {
      uint64_t size, flags, start, end, walk_end, vec, vec_len, max_pages, category_inverted, category_mask,
          category_anyof_mask, return_mask;
    };
    constexpr uint64_t kIsHuge = 1u << 6;
    constexpr unsigned long kPagemapScan = _IOWR('f', 16, ScanArg);
    const int pagemap = ::open("/proc/self/pagemap", O_RDONLY | O_CLOEXEC);
    if (pagemap < 0) return Error(Errc::unsupported, "/proc/self/pagemap: cannot open");
    // Pages that are not huge. The last partial huge page of the file cannot be huge and is left
    // out.
    const uint64_t end = base + size_ / kHuge * kHuge;
    std::vector<std::pair<uint64_t, uint64_t>> ranges;
    Region found[256];
    for (uint64_t at = base; at < end;) {
      ScanArg arg{sizeof(ScanArg), 0, at, end, 0, reinterpret_cast<uintptr_t>(found), 256, 0,
                  kIsHuge, kIsHuge, 0, kIsHuge};
      const long n = ::ioctl(pagemap, kPagemapScan, &arg);
      if (n < 0) {
        ::close(pagemap);
        return Error(Errc::unsupported, "/proc/self/pagemap: no PAGEMAP_SCAN (Linux 6.7+)");
      }
      for (long i = 0; i < n; ++i) {
        const uint64_t lo = (found[i].start - base) / kHuge * kHuge, hi = (found[i].end - base + kHuge - 1) / kHuge * kHuge;
        if (!ranges.empty() && ranges.back().second >= lo) {
          ranges.back().second = std::max(ranges.back().second, hi);
        } else {
          ranges.emplace_back(lo, hi);
        }
      }
      if (arg.walk_end <= at) break;
      at = arg.walk_end;
    }
    ::close(pagemap);
    return ranges;
#else
    return Error(Errc::unsupported, path_ + ": page sizes are not known on this system");
#endif
  }

  // Evicts the file's clean cached pages in [offset, offset + length) (length 0: to the end) from
  // the page cache; they are read again on next access. Pages mapped anywhere stay.
  static void drop_cached_pages(const std::filesystem::path& path, uint64_t offset = 0, uint64_t length = 0) {
#if defined(__linux__)
    const int fd = ::open(path.string().c_str(), O_RDONLY | O_CLOEXEC);
    if (fd < 0) return;
    ::posix_fadvise(fd, static_cast<off_t>(offset), static_cast<off_t>(length), POSIX_FADV_DONTNEED);
    ::close(fd);
#else
    (void)path;
    (void)offset;
    (void)length;
#endif
  }

  const std::byte* data() const { return data_; }
  uint64_t size() const { return size_; }

  // Ok while the mapped file is still at least as long as when it was mapped; an Errc::io error
  // naming the file when it has shrunk (reading the lost pages would raise SIGBUS).
  Status size_unchanged() const {
#if !defined(_WIN32)
    if (fd_ < 0) return ok();
    struct stat st {};
    if (::fstat(fd_, &st) != 0) return Error(Errc::io, path_ + ": cannot read size");
    if (static_cast<uint64_t>(st.st_size) < size_) {
      return Error(Errc::io, path_ + ": file shrank from " + std::to_string(size_) + " to " +
                                 std::to_string(static_cast<uint64_t>(st.st_size)) +
                                 " bytes after it was mapped (was it replaced in place while loading?)");
    }
#endif
    return ok();
  }
  const std::string& path() const { return path_; }

  // Hints that [offset, offset + length) will be read soon (starts read-ahead).
  void advise_willneed(uint64_t offset, uint64_t length) const {
#if !defined(_WIN32)
    if (!data_ || offset >= size_) return;
    const uint64_t page = static_cast<uint64_t>(::sysconf(_SC_PAGESIZE));
    const uint64_t start = offset / page * page;
    const uint64_t end = offset + length < size_ ? offset + length : size_;
    ::madvise(const_cast<std::byte*>(data_) + start, end - start, MADV_WILLNEED);
#else
    (void)offset;
    (void)length;
#endif
  }

 private:
  void release() {
    if (data_) {
#if defined(_WIN32)
      UnmapViewOfFile(data_);
#else
      ::munmap(const_cast<std::byte*>(data_), size_);
#endif
    }
#if !defined(_WIN32)
    if (fd_ >= 0) ::close(fd_);
#endif
    fd_ = -1;
    data_ = nullptr;
    size_ = 0;
  }
  void swap(MappedFile& o) noexcept {
    std::swap(data_, o.data_);
    std::swap(size_, o.size_);
    std::swap(path_, o.path_);
    std::swap(fd_, o.fd_);
  }

  const std::byte* data_ = nullptr;
  uint64_t size_ = 0;
  std::string path_;
  int fd_ = -1;  // POSIX: kept open for size_unchanged()
};

}  // namespace mimo::detail
