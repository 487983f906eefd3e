//! libxdp, xdp-tools' library (built into the binary from source by `libxdp-sys`, which xsk-rs
//! brings), for its multi-program dispatcher: the protocol through which XDP programs share an
//! interface, and the one `xdp-loader`, `xdp-filter` and every other libxdp user recognise.
//! Typed wrappers over the few C calls xmacvlan needs. What libxdp and libbpf print goes to the
//! log, and the warnings printed during a call into the error that call returns.
use std::cell::RefCell;
use std::ffi::{CStr, CString, c_char, c_int, c_uint};
use std::marker::PhantomData;
use std::os::fd::{BorrowedFd, RawFd};
use std::path::Path;
use std::ptr::NonNull;

use libxdp_sys as sys;

use crate::modes::XdpMode;

/// An XDP verdict, as libxdp names the actions on which the dispatcher chain-calls the next
/// program.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum XdpAction {
    Aborted,
    Drop,
    Pass,
    Tx,
    Redirect,
}

impl XdpAction {
    pub const ALL: [XdpAction; 5] = [
        XdpAction::Aborted,
        XdpAction::Drop,
        XdpAction::Pass,
        XdpAction::Tx,
        XdpAction::Redirect,
    ];

    pub fn name(self) -> &'static str {
        match self {
            XdpAction::Aborted => "aborted",
            XdpAction::Drop => "drop",
            XdpAction::Pass => "pass",
            XdpAction::Tx => "tx",
            XdpAction::Redirect => "redirect",
        }
    }

    fn raw(self) -> sys::xdp_action {
        match self {
            XdpAction::Aborted => sys::xdp_action_XDP_ABORTED,
            XdpAction::Drop => sys::xdp_action_XDP_DROP,
            XdpAction::Pass => sys::xdp_action_XDP_PASS,
            XdpAction::Tx => sys::xdp_action_XDP_TX,
            XdpAction::Redirect => sys::xdp_action_XDP_REDIRECT,
        }
    }
}

/// One program of a dispatcher's chain, as libxdp reads it back from the dispatcher.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct ChainProgram {
    pub name: String,
    pub id: u32,
    /// libxdp's run priority: lower runs first.
    pub priority: u32,
    /// The verdicts on which the dispatcher goes on to the next program (any other verdict
    /// is final).
    pub chain_call: Vec<XdpAction>,
}

/// A libxdp call that failed: which, the error code, and what libxdp or libbpf printed.
#[derive(Debug, thiserror::Error)]
#[error("{call}{}", said_text(said))]
pub struct LibxdpError {
    pub call: String,
    pub said: Vec<String>,
    #[source]
    pub errno: std::io::Error,
}

fn said_text(lines: &[String]) -> String {
    match lines {
        [] => String::new(),
        _ => format!(" (libxdp: {})", lines.join("; ")),
    }
}

fn error(call: impl Into<String>, errno: i32, said: Vec<String>) -> LibxdpError {
    LibxdpError {
        call: call.into(),
        said,
        errno: std::io::Error::from_raw_os_error(errno.abs()),
    }
}

fn last_errno() -> i32 {
    std::io::Error::last_os_error().raw_os_error().unwrap_or(0)
}

/// An ELF object opened by libbpf (not loaded), for libxdp to load a program of.
pub(super) struct Object {
    raw: NonNull<sys::bpf_object>,
    /// libbpf reads the ELF in place for as long as the object lives (and libelf may write
    /// to a private image): a copy of our own.
    _elf: Box<[u8]>,
}

impl Object {
    pub(super) fn open(elf: &[u8]) -> Result<Self, LibxdpError> {
        let elf: Box<[u8]> = elf.into();
        // SAFETY: `elf` is a live buffer of `elf.len()` bytes kept in the object for its whole
        // life; null options are allowed.
        let (raw, said) = with_messages(|| unsafe {
            sys::bpf_object__open_mem(elf.as_ptr().cast(), elf.len(), std::ptr::null())
        });
        let errno = last_errno();
        // libbpf 1.x returns NULL (errno set) on failure.
        let raw = NonNull::new(raw)
            .ok_or_else(|| error("opening the classifier's object with libbpf", errno, said))?;
        Ok(Self { raw, _elf: elf })
    }

    /// Load only program `name` of the object (libbpf loads every program of an object at
    /// once, and the others are not meant for a dispatcher).
    pub(super) fn load_only(&mut self, name: &str) -> Result<(), LibxdpError> {
        let mut found = false;
        let mut prog = std::ptr::null_mut();
        loop {
            // SAFETY: the object is open; `prog` is null or the previous program of it.
            prog = unsafe { sys::bpf_object__next_program(self.raw.as_ptr(), prog) };
            let Some(p) = NonNull::new(prog) else { break };
            // SAFETY: `p` is a program of the object; its name lives as long as the object.
            let this = unsafe { CStr::from_ptr(sys::bpf_program__name(p.as_ptr())) };
            let keep = this.to_bytes() == name.as_bytes();
            found |= keep;
            // SAFETY: as above; the object is not loaded yet, so autoload can change.
            let rc = unsafe { sys::bpf_program__set_autoload(p.as_ptr(), keep) };
            if rc != 0 {
                return Err(error("choosing the program to load", rc, Vec::new()));
            }
        }
        if !found {
            return Err(error(
                format!("program {name} is not in the object"),
                libc::ENOENT,
                Vec::new(),
            ));
        }
        Ok(())
    }

    /// Make each map of the object the existing map `fd_of` gives for its name (libbpf names
    /// a data section's map `OBJECT.rodata`), so the program libxdp loads shares them; a map
    /// `fd_of` has nothing for is not created.
    pub(super) fn reuse_maps<'f>(
        &mut self,
        mut fd_of: impl FnMut(&str) -> Option<BorrowedFd<'f>>,
    ) -> Result<(), LibxdpError> {
        let mut map = std::ptr::null_mut();
        loop {
            // SAFETY: the object is open; `map` is null or the previous map of it.
            map = unsafe { sys::bpf_object__next_map(self.raw.as_ptr(), map) };
            let Some(m) = NonNull::new(map) else {
                return Ok(());
            };
            // SAFETY: `m` is a map of the object; its name lives as long as the object.
            let name = unsafe { CStr::from_ptr(sys::bpf_map__name(m.as_ptr())) }
                .to_string_lossy()
                .into_owned();
            let Some(fd) = fd_of(&name) else {
                // Not one the program uses (the loaded program has no such map): not created,
                // so libbpf refuses the load if the program refers to it after all.
                // SAFETY: `m` is a map of the unloaded object.
                let rc = unsafe { sys::bpf_map__set_autocreate(m.as_ptr(), false) };
                if rc != 0 {
                    return Err(error(format!("leaving map {name} out"), rc, Vec::new()));
                }
                continue;
            };
            let raw: RawFd = std::os::fd::AsRawFd::as_raw_fd(&fd);
            // SAFETY: `m` is a map of the unloaded object; libbpf duplicates `raw`, which is
            // open for the duration of the call.
            let rc = unsafe { sys::bpf_map__reuse_fd(m.as_ptr(), raw) };
            if rc != 0 {
                return Err(error(format!("sharing map {name}"), rc, Vec::new()));
            }
        }
    }
}

impl Drop for Object {
    fn drop(&mut self) {
        // SAFETY: the object was opened by libbpf and is closed once; programs made from it
        // borrow it (`Program<'o>`) and are gone by now.
        unsafe { sys::bpf_object__close(self.raw.as_ptr()) }
    }
}

/// How libxdp attaches a dispatcher.
fn raw_mode(mode: XdpMode) -> sys::xdp_attach_mode {
    match mode {
        XdpMode::Native => sys::xdp_attach_mode_XDP_MODE_NATIVE,
        XdpMode::Generic => sys::xdp_attach_mode_XDP_MODE_SKB,
        XdpMode::Auto => sys::xdp_attach_mode_XDP_MODE_UNSPEC,
    }
}

/// A libxdp program: of an [`Object`] (to be loaded and attached), or an existing one.
pub(super) struct Program<'o> {
    raw: NonNull<sys::xdp_program>,
    _object: PhantomData<&'o Object>,
}

impl<'o> Program<'o> {
    /// Program `name` of `object`, not loaded yet.
    pub(super) fn of_object(object: &'o Object, name: &str) -> Result<Self, LibxdpError> {
        let name_c =
            CString::new(name).map_err(|_| error("a program name", libc::EINVAL, vec![]))?;
        let mut opts = sys::xdp_program_opts {
            sz: std::mem::size_of::<sys::xdp_program_opts>(),
            obj: object.raw.as_ptr(),
            opts: std::ptr::null_mut(),
            prog_name: name_c.as_ptr(),
            find_filename: std::ptr::null(),
            open_filename: std::ptr::null(),
            pin_path: std::ptr::null(),
            id: 0,
            fd: 0,
        };
        // SAFETY: `opts` is a valid, fully initialised options struct whose pointers live
        // for the call; libxdp does not take ownership of the object (it is "external").
        let (raw, said) = with_messages(|| unsafe { sys::xdp_program__create(&mut opts) });
        let errno = last_errno();
        let raw = NonNull::new(raw)
            .ok_or_else(|| error(format!("libxdp opening program {name}"), errno, said))?;
        Ok(Self {
            raw,
            _object: PhantomData,
        })
    }

    /// Run after programs of a lower priority and before those of a higher one.
    pub(super) fn set_priority(&mut self, priority: u32) -> Result<(), LibxdpError> {
        // SAFETY: the program is live and not attached yet.
        let rc = unsafe { sys::xdp_program__set_run_prio(self.raw.as_ptr(), priority as c_uint) };
        check(rc, "setting the run priority", Vec::new())
    }

    /// Chain-call the next program on exactly these verdicts.
    pub(super) fn set_chain_call(&mut self, on: &[XdpAction]) -> Result<(), LibxdpError> {
        for action in XdpAction::ALL {
            // SAFETY: the program is live and not attached yet.
            let rc = unsafe {
                sys::xdp_program__set_chain_call_enabled(
                    self.raw.as_ptr(),
                    action.raw() as c_uint,
                    on.contains(&action),
                )
            };
            check(rc, "setting the chain-call actions", Vec::new())?;
        }
        Ok(())
    }

    /// Add it to the dispatcher on `ifindex` (calling thread's namespace), or make one with it
    /// alone (`mode` then says where; an existing dispatcher keeps its own).
    pub(super) fn attach(&mut self, ifindex: u32, mode: XdpMode) -> Result<(), LibxdpError> {
        // SAFETY: the program is live; libxdp loads it (its object is alive: `'o`) and links
        // it into a dispatcher, pinning both in bpffs.
        let (rc, said) = with_messages(|| unsafe {
            sys::xdp_program__attach(self.raw.as_ptr(), ifindex as c_int, raw_mode(mode), 0)
        });
        check(rc, "libxdp adding the classifier to the dispatcher", said)
    }

    /// The kernel's id (0 before it is loaded).
    pub(super) fn id(&self) -> u32 {
        // SAFETY: the program is live.
        unsafe { sys::xdp_program__id(self.raw.as_ptr()) }
    }

    /// Its file descriptor once loaded, valid while `self` lives.
    pub(super) fn fd(&self) -> Option<BorrowedFd<'_>> {
        // SAFETY: the program is live.
        let fd = unsafe { sys::xdp_program__fd(self.raw.as_ptr()) };
        // SAFETY: a non-negative fd is owned by the program, which outlives the borrow.
        (fd >= 0).then(|| unsafe { BorrowedFd::borrow_raw(fd) })
    }

    /// Pin the loaded program at `path` (bpffs).
    pub(super) fn pin(&self, path: &Path) -> Result<(), LibxdpError> {
        let c = CString::new(path.as_os_str().as_encoded_bytes())
            .map_err(|_| error("a pin path", libc::EINVAL, vec![]))?;
        // SAFETY: the program is live and loaded; the path is a NUL-terminated string.
        let rc = unsafe { sys::xdp_program__pin(self.raw.as_ptr(), c.as_ptr()) };
        check(
            rc,
            format!("pinning the program at {}", path.display()),
            vec![],
        )
    }

    fn describe(&self) -> ChainProgram {
        let p = self.raw.as_ptr();
        // SAFETY: the program is live; its name lives as long as it does.
        let name = unsafe { CStr::from_ptr(sys::xdp_program__name(p)) };
        ChainProgram {
            name: name.to_string_lossy().into_owned(),
            id: self.id(),
            // SAFETY: the program is live.
            priority: unsafe { sys::xdp_program__run_prio(p) },
            chain_call: XdpAction::ALL
                .into_iter()
                // SAFETY: the program is live.
                .filter(|a| unsafe { sys::xdp_program__chain_call_enabled(p, a.raw()) })
                .collect(),
        }
    }
}

impl Program<'static> {
    /// A loaded program by id.
    pub(super) fn from_id(id: u32) -> Result<Self, LibxdpError> {
        // SAFETY: plain call; the result is checked below.
        let (raw, said) = with_messages(|| unsafe { sys::xdp_program__from_id(id) });
        // SAFETY: `raw` came from libxdp.
        let err = unsafe { sys::libxdp_get_error(raw.cast()) };
        match NonNull::new(raw) {
            Some(raw) if err == 0 => Ok(Self {
                raw,
                _object: PhantomData,
            }),
            _ => Err(error(
                format!("libxdp opening program {id}"),
                err as i32,
                said,
            )),
        }
    }
}

impl Drop for Program<'_> {
    fn drop(&mut self) {
        // SAFETY: the program came from libxdp and is closed once (this closes only its own
        // reference: what it attached stays attached, held by libxdp's pins).
        unsafe { sys::xdp_program__close(self.raw.as_ptr()) }
    }
}

/// Remove program `id` from the dispatcher on `ifindex` (calling thread's namespace). libxdp
/// builds the dispatcher again without it, or removes the dispatcher when it was the last.
pub(super) fn detach(ifindex: u32, id: u32) -> Result<(), LibxdpError> {
    let program = Program::from_id(id)?;
    // SAFETY: the program is live; libxdp finds it in the interface's dispatcher by id.
    let (rc, said) = with_messages(|| unsafe {
        sys::xdp_program__detach(
            program.raw.as_ptr(),
            ifindex as c_int,
            sys::xdp_attach_mode_XDP_MODE_UNSPEC,
            0,
        )
    });
    check(
        rc,
        format!("libxdp removing program {id} from the dispatcher"),
        said,
    )
}

/// What libxdp finds on an interface: its dispatcher with the chain, or a program alone.
pub(super) struct Multiprog(NonNull<sys::xdp_multiprog>);

impl Multiprog {
    /// The XDP program(s) on `ifindex` (calling thread's namespace); None when there is none.
    pub(super) fn of_interface(ifindex: u32) -> Result<Option<Self>, LibxdpError> {
        // SAFETY: plain call; the result is checked below.
        let (raw, said) =
            with_messages(|| unsafe { sys::xdp_multiprog__get_from_ifindex(ifindex as c_int) });
        // SAFETY: `raw` came from libxdp (NULL, an encoded error, or a multiprog).
        let err = unsafe { sys::libxdp_get_error(raw.cast()) };
        match err {
            0 => Ok(NonNull::new(raw).map(Self)),
            e if e == -(libc::ENOENT as std::ffi::c_long) => Ok(None),
            e => Err(error(
                "libxdp reading the interface's XDP programs",
                e as i32,
                said,
            )),
        }
    }

    /// Whether it is libxdp's dispatcher (else a program attached alone, or a dispatcher whose
    /// pins libxdp could not find).
    pub(super) fn is_dispatcher(&self) -> bool {
        // SAFETY: the multiprog is live.
        !unsafe { sys::xdp_multiprog__is_legacy(self.0.as_ptr()) }
    }

    /// The id of the program attached to the interface (the dispatcher itself).
    pub(super) fn main_id(&self) -> u32 {
        // SAFETY: the multiprog is live; its main program (possibly NULL) lives with it.
        let main = unsafe { sys::xdp_multiprog__main_prog(self.0.as_ptr()) };
        if main.is_null() {
            return 0;
        }
        // SAFETY: `main` is a live program of the multiprog.
        unsafe { sys::xdp_program__id(main) }
    }

    /// Where the dispatcher runs: native or generic (`Auto` for a mode libxdp cannot name).
    pub(super) fn mode(&self) -> XdpMode {
        // SAFETY: the multiprog is live.
        match unsafe { sys::xdp_multiprog__attach_mode(self.0.as_ptr()) } {
            sys::xdp_attach_mode_XDP_MODE_NATIVE => XdpMode::Native,
            sys::xdp_attach_mode_XDP_MODE_SKB => XdpMode::Generic,
            _ => XdpMode::Auto,
        }
    }

    /// The dispatcher's programs in the order a frame meets them.
    pub(super) fn programs(&self) -> Vec<ChainProgram> {
        let mut out = Vec::new();
        let mut prog: *mut sys::xdp_program = std::ptr::null_mut();
        loop {
            // SAFETY: the multiprog is live; `prog` is null or its previous program.
            prog = unsafe { sys::xdp_multiprog__next_prog(prog, self.0.as_ptr()) };
            let Some(raw) = NonNull::new(prog) else {
                return out;
            };
            // The multiprog owns its programs: describe, never close.
            let borrowed = std::mem::ManuallyDrop::new(Program {
                raw,
                _object: PhantomData,
            });
            out.push(borrowed.describe());
        }
    }
}

impl Drop for Multiprog {
    fn drop(&mut self) {
        // SAFETY: the multiprog came from libxdp and is closed once, with its programs.
        unsafe { sys::xdp_multiprog__close(self.0.as_ptr()) }
    }
}

fn check(rc: c_int, call: impl Into<String>, said: Vec<String>) -> Result<(), LibxdpError> {
    match rc {
        0 => Ok(()),
        rc => Err(error(call, rc, said)),
    }
}

thread_local! {
    /// The warnings libxdp and libbpf print during a call of [`with_messages`] on this thread.
    static SAID: RefCell<Option<Vec<String>>> = const { RefCell::new(None) };
}

/// Run `f` (libxdp calls on this thread), returning what they warned about.
fn with_messages<T>(f: impl FnOnce() -> T) -> (T, Vec<String>) {
    install_printer();
    let outer = SAID.with(|s| s.borrow_mut().replace(Vec::new()));
    let out = f();
    let said = SAID.with(|s| std::mem::replace(&mut *s.borrow_mut(), outer));
    (out, said.unwrap_or_default())
}

/// libxdp's and libbpf's messages into the log (and warnings during [`with_messages`] into
/// its result) instead of on stderr.
fn install_printer() {
    static ONCE: std::sync::Once = std::sync::Once::new();
    #[cfg(target_arch = "x86_64")]
    ONCE.call_once(|| {
        // SAFETY: `print` matches both libraries' printer signature and is safe to call from
        // any thread at any time.
        unsafe {
            sys::libxdp_set_print(Some(print));
            libbpf_set_print(Some(print));
        }
    });
    #[cfg(not(target_arch = "x86_64"))]
    ONCE.call_once(|| {});
}

#[cfg(target_arch = "x86_64")]
unsafe extern "C" {
    fn vsnprintf(
        buf: *mut c_char,
        size: usize,
        format: *const c_char,
        args: *mut sys::__va_list_tag,
    ) -> c_int;
    /// libbpf's printer hook: the same shape as libxdp's.
    fn libbpf_set_print(print: sys::libxdp_print_fn_t) -> sys::libxdp_print_fn_t;
}

/// At most this many warnings of one call go into its error (libbpf prints a verifier log
/// line by line).
const MAX_SAID: usize = 8;

#[cfg(target_arch = "x86_64")]
unsafe extern "C" fn print(
    level: sys::libxdp_print_level,
    format: *const c_char,
    args: *mut sys::__va_list_tag,
) -> c_int {
    let mut buf = [0 as c_char; 512];
    // SAFETY: `format` and `args` are the printf arguments libxdp or libbpf passed; vsnprintf
    // writes at most `buf.len()` bytes, NUL included, and consumes `args` once.
    let n = unsafe { vsnprintf(buf.as_mut_ptr(), buf.len(), format, args) };
    if n < 0 {
        return 0;
    }
    // SAFETY: vsnprintf NUL-terminated the buffer.
    let text = unsafe { CStr::from_ptr(buf.as_ptr()) }.to_string_lossy();
    let line = text.trim();
    if line.is_empty() {
        return 0;
    }
    let warning = level == sys::libxdp_print_level_LIBXDP_WARN;
    let captured = SAID.with(|s| match s.try_borrow_mut() {
        Ok(mut said) => match said.as_mut() {
            Some(said) if warning => {
                if said.len() < MAX_SAID {
                    said.push(line.to_string());
                }
                true
            }
            Some(_) => false,
            None => false,
        },
        Err(_) => false,
    });
    match (warning, captured) {
        (true, false) => tracing::warn!(target: "libxdp", "{line}"),
        _ => tracing::debug!(target: "libxdp", "{line}"),
    }
    n
}
