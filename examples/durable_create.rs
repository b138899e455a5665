//! The disk's durable-create rate, the ceiling for any spool: each operation writes a file,
//! fsyncs it, renames it into place and fsyncs the directory.
//!
//! usage: durable_create DIR WRITERS COUNT   (prints creates per second; DIR is left in place,
//! since deleting many files at once slows later inode allocation on some filesystems)

use std::fs::{self, File, OpenOptions};
use std::io::Write;
use std::path::PathBuf;
use std::time::Instant;

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let [_, dir, writers, count] = args.as_slice() else {
        eprintln!("usage: durable_create DIR WRITERS COUNT");
        std::process::exit(2);
    };
    let dir = PathBuf::from(dir);
    let writers: usize = writers.parse().expect("WRITERS");
    let count: usize = count.parse().expect("COUNT");
    fs::create_dir_all(dir.join("tmp")).unwrap();
    fs::create_dir_all(dir.join("new")).unwrap();
    let body = vec![b'x'; 4096];
    let started = Instant::now();
    std::thread::scope(|scope| {
        for w in 0..writers {
            let (dir, body) = (&dir, &body);
            let share = count / writers + usize::from(w < count % writers);
            scope.spawn(move || {
                let new_dir = File::open(dir.join("new")).unwrap();
                for n in 0..share {
                    let name = format!("{w}-{n}");
                    let tmp = dir.join("tmp").join(&name);
                    let mut f = OpenOptions::new().write(true).create_new(true).open(&tmp).unwrap();
                    f.write_all(body).unwrap();
                    f.sync_data().unwrap();
                    fs::rename(&tmp, dir.join("new").join(&name)).unwrap();
                    new_dir.sync_all().unwrap();
                }
            });
        }
    });
    let rate = count as f64 / started.elapsed().as_secs_f64();
    println!("{rate:.0}");
}
