//! The part of libiscsi's C API the initiator uses, loaded at run time.
//!
//! The library is opened with `dlopen("libiscsi.so.7")` on first use rather
//! than linked: gfs2-fuse then builds without libiscsi's headers and runs
//! without the library, and only an `iscsi://` device needs it (Debian's
//! `libiscsi7`). The soname pins the ABI these declarations describe
//! (libiscsi 1.18 to 1.20, API version 20170105).

use std::ffi::{c_char, c_int, c_void, CStr};
use std::sync::OnceLock;

/// `struct iscsi_context`: opaque.
#[repr(C)]
pub struct Context {
    _private: [u8; 0],
}

/// `struct scsi_sense` (scsi-lowlevel.h).
#[repr(C)]
#[derive(Debug, Clone, Copy)]
pub struct ScsiSense {
    pub error_type: u8,
    pub key: c_int,
    pub ascq: c_int,
    /// The three one-bit fields (sense_specific, ill_param_in_cdb, bit_pointer_valid).
    pub bits: u8,
    pub bit_pointer: u8,
    pub field_pointer: u16,
}

/// `struct scsi_data`.
#[repr(C)]
pub struct ScsiData {
    pub size: c_int,
    pub data: *mut u8,
}

/// The leading fields of `struct scsi_task`, which is only ever handled
/// through pointers libiscsi allocated.
#[repr(C)]
pub struct ScsiTask {
    pub status: c_int,
    pub cdb_size: c_int,
    pub xfer_dir: c_int,
    pub expxferlen: c_int,
    pub cdb: [u8; 16],
    pub residual_status: c_int,
    pub residual: usize,
    pub sense: ScsiSense,
    pub datain: ScsiData,
}

// Offsets checked against the C headers of libiscsi 1.19 (x86-64 and other
// LP64 targets); a mismatch fails the build instead of misreading memory.
#[cfg(target_pointer_width = "64")]
const _: () = {
    assert!(std::mem::size_of::<ScsiSense>() == 16);
    assert!(std::mem::offset_of!(ScsiSense, bit_pointer) == 13);
    assert!(std::mem::offset_of!(ScsiTask, residual_status) == 32);
    assert!(std::mem::offset_of!(ScsiTask, residual) == 40);
    assert!(std::mem::offset_of!(ScsiTask, sense) == 48);
    assert!(std::mem::offset_of!(ScsiTask, datain) == 64);
};

/// `struct iscsi_data`: a data-out buffer handed to
/// `iscsi_scsi_command_async` (referenced, not copied, until the task ends).
#[repr(C)]
pub struct IscsiData {
    pub size: usize,
    pub data: *mut u8,
}

/// `enum scsi_xfer_dir`.
pub const SCSI_XFER_READ: c_int = 1;
pub const SCSI_XFER_WRITE: c_int = 2;

/// `iscsi_command_cb`.
pub type CommandCb =
    unsafe extern "C" fn(ctx: *mut Context, status: c_int, data: *mut c_void, private: *mut c_void);

pub const SCSI_STATUS_GOOD: c_int = 0;
pub const SCSI_STATUS_CHECK_CONDITION: c_int = 2;
pub const SCSI_STATUS_BUSY: c_int = 8;
pub const SCSI_STATUS_RESERVATION_CONFLICT: c_int = 0x18;
pub const SCSI_STATUS_TASK_SET_FULL: c_int = 0x28;
pub const SCSI_STATUS_TASK_ABORTED: c_int = 0x40;
pub const SCSI_STATUS_CANCELLED: c_int = 0x0f00_0000;
pub const SCSI_STATUS_ERROR: c_int = 0x0f00_0001;
pub const SCSI_STATUS_TIMEOUT: c_int = 0x0f00_0002;

pub const SENSE_NOT_READY: c_int = 0x02;
pub const SENSE_ILLEGAL_REQUEST: c_int = 0x05;
pub const SENSE_UNIT_ATTENTION: c_int = 0x06;
pub const SENSE_DATA_PROTECTION: c_int = 0x07;
pub const ASCQ_INVALID_OPERATION_CODE: c_int = 0x2000;

pub const RESIDUAL_UNDERFLOW: c_int = 1;
pub const SESSION_NORMAL: c_int = 2;
pub const HEADER_DIGEST_NONE_CRC32C: c_int = 1;

macro_rules! libiscsi {
    ($($name:ident: fn($($arg:ty),*) $(-> $ret:ty)?;)*) => {
        /// Entry points of libiscsi.
        #[allow(clippy::type_complexity)]
        pub struct Lib {
            $(pub $name: unsafe extern "C" fn($($arg),*) $(-> $ret)?,)*
        }

        impl Lib {
            /// SAFETY: `h` is a live dlopen handle of libiscsi.so.7, whose
            /// symbols have the signatures declared here.
            unsafe fn load(h: *mut c_void) -> Result<Lib, String> {
                Ok(Lib {$($name: {
                    let p = libc::dlsym(h, concat!(stringify!($name), "\0").as_ptr().cast());
                    if p.is_null() {
                        return Err(format!("libiscsi.so.7 has no {}", stringify!($name)));
                    }
                    std::mem::transmute::<*mut c_void, unsafe extern "C" fn($($arg),*) $(-> $ret)?>(p)
                },)*})
            }
        }
    };
}

libiscsi! {
    iscsi_create_context: fn(*const c_char) -> *mut Context;
    iscsi_destroy_context: fn(*mut Context) -> c_int;
    iscsi_get_error: fn(*mut Context) -> *const c_char;
    iscsi_set_targetname: fn(*mut Context, *const c_char) -> c_int;
    iscsi_set_session_type: fn(*mut Context, c_int) -> c_int;
    iscsi_set_header_digest: fn(*mut Context, c_int) -> c_int;
    iscsi_set_initiator_username_pwd: fn(*mut Context, *const c_char, *const c_char) -> c_int;
    iscsi_set_target_username_pwd: fn(*mut Context, *const c_char, *const c_char) -> c_int;
    iscsi_set_noautoreconnect: fn(*mut Context, c_int);
    iscsi_set_isid_random: fn(*mut Context, u32, u32) -> c_int;
    iscsi_full_connect_async: fn(*mut Context, *const c_char, c_int, CommandCb, *mut c_void) -> c_int;
    iscsi_logout_async: fn(*mut Context, CommandCb, *mut c_void) -> c_int;
    iscsi_nop_out_async: fn(*mut Context, CommandCb, *mut u8, c_int, *mut c_void) -> c_int;
    iscsi_get_fd: fn(*mut Context) -> c_int;
    iscsi_which_events: fn(*mut Context) -> c_int;
    iscsi_service: fn(*mut Context, c_int) -> c_int;
    iscsi_read16_task: fn(*mut Context, c_int, u64, u32, c_int, c_int, c_int, c_int, c_int, c_int,
        CommandCb, *mut c_void) -> *mut ScsiTask;
    iscsi_write16_task: fn(*mut Context, c_int, u64, *mut u8, u32, c_int, c_int, c_int, c_int,
        c_int, c_int, CommandCb, *mut c_void) -> *mut ScsiTask;
    iscsi_synchronizecache10_task: fn(*mut Context, c_int, c_int, c_int, c_int, c_int, CommandCb,
        *mut c_void) -> *mut ScsiTask;
    iscsi_synchronizecache16_task: fn(*mut Context, c_int, u64, u32, c_int, c_int, CommandCb,
        *mut c_void) -> *mut ScsiTask;
    iscsi_readcapacity16_task: fn(*mut Context, c_int, CommandCb, *mut c_void) -> *mut ScsiTask;
    iscsi_modesense6_task: fn(*mut Context, c_int, c_int, c_int, c_int, c_int, u8, CommandCb,
        *mut c_void) -> *mut ScsiTask;
    iscsi_inquiry_task: fn(*mut Context, c_int, c_int, c_int, c_int, CommandCb, *mut c_void)
        -> *mut ScsiTask;
    scsi_create_task: fn(c_int, *mut u8, c_int, c_int) -> *mut ScsiTask;
    iscsi_scsi_command_async: fn(*mut Context, c_int, *mut ScsiTask, CommandCb, *mut IscsiData,
        *mut c_void) -> c_int;
    scsi_task_add_data_in_buffer: fn(*mut ScsiTask, c_int, *mut u8) -> c_int;
    scsi_free_scsi_task: fn(*mut ScsiTask);
    scsi_sense_key_str: fn(c_int) -> *const c_char;
    scsi_sense_ascq_str: fn(c_int) -> *const c_char;
}

/// libiscsi, loaded once per process.
pub fn lib() -> Result<&'static Lib, String> {
    static LIB: OnceLock<Result<Lib, String>> = OnceLock::new();
    LIB.get_or_init(|| {
        // SAFETY: dlopen/dlerror with NUL-terminated names; the handle is
        // never closed, so the function pointers stay valid for the process.
        unsafe {
            let h = libc::dlopen(c"libiscsi.so.7".as_ptr(), libc::RTLD_NOW | libc::RTLD_LOCAL);
            if h.is_null() {
                let e = libc::dlerror();
                let why = if e.is_null() {
                    String::from("unknown error")
                } else {
                    CStr::from_ptr(e).to_string_lossy().into_owned()
                };
                return Err(format!(
                    "cannot load libiscsi ({why}); install Debian's libiscsi7"
                ));
            }
            Lib::load(h)
        }
    })
    .as_ref()
    .map_err(Clone::clone)
}

/// A C string from libiscsi, or "" for NULL.
///
/// SAFETY: `p` is NULL or points to a NUL-terminated string that outlives
/// the call.
pub unsafe fn text(p: *const c_char) -> String {
    if p.is_null() {
        String::new()
    } else {
        CStr::from_ptr(p).to_string_lossy().into_owned()
    }
}
